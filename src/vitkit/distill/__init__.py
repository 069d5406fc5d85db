"""Knowledge distillation (DeiT, Touvron et al., ICML 2021): a small, fast student learns from a
large teacher's outputs on the same images, as well as from the labels.

The teacher is anything vitkit opens (a run, a timm / Hugging Face / torchvision / .npz ViT, a
Hub id, an exported .onnx file run by onnxruntime); the student is any vitkit ViT, by default
the model vitkit trains for the data (`vitkit train`'s default architecture and image size), or
the teacher's own first layers at a lower resolution (vitkit.distill.student).
The teacher labels K augmented views of every training image once (vitkit.distill.views); the
student then trains on them through the ordinary training run (vitkit.training.fit), so
checkpoints, exact resume, time budgets, DDP, metrics and the published model folder are the
same as for any run. The published student is a plain vitkit model folder.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from ..checkpoint import read_meta
from ..data.augment import AugmentConfig
from ..data.pipeline import Data, DataConfig
from ..inference import prepare
from ..loading import LoadOptions, open_model
from ..model import ViT
from ..multilabel import is_multilabel
from ..notices import VitkitWarning, check_ranges, is_number, one_line
from ..plan import load_data
from ..precision import pick_device
from ..training import OptimConfig, RunConfig, TrainConfig, fit
from ..training.batches import default_epochs
from ..training.config import ModelSpec
from ..training.resume import OBJECTIVE_KEY, stored_config
from ..training.trainer import RunResult
from .objective import LOSSES, Distillation
from .student import CUT_OPTIM, cut_from_teacher, default_layers, default_size
from .views import TaughtViews, read_views, teach, views_bytes, views_key, views_path, write_views

__all__ = ["KEY", "DistillOptions", "Lessons", "distill", "lessons"]

KEY = "distill"  # config.json: what a distillation run was taught by
VIEWS_MEMORY = 4  # views may take this many times --data.cache_gb in memory (cached on disk within 1x)


@dataclass
class DistillOptions:
    """How the student learns from the teacher (--distill.KEY).

    Attributes:
        loss: "soft" (KL divergence to the teacher's probabilities at temperature tau; the
            default: tied with hard on two-class photos, ahead of it on ten classes), "hard"
            (the teacher's decisions as a second label), "token" (DeiT's distillation token
            learns the teacher's decisions, the class token the labels) or "labels" (the
            teacher ignored: the baseline).
        alpha: weight of the teacher's term in the soft loss.
        tau: temperature of the soft loss.
        views: augmented views of every training image the teacher labels once (view 1 as
            evaluation prepares images); the student's epochs pass over all of them.
        teacher_batch: images per teacher forward.
        init: "scratch" (a new student: --model options, default vitkit train's model for the
            data) or "teacher" (the teacher's first --model.num_layers blocks, default half,
            at --data.image_size, default half the teacher's side; a ViT teacher only; it
            trains with AdamW at 1e-4 unless --optim is changed).
    """

    loss: Literal["hard", "soft", "token", "labels"] = "soft"
    alpha: float = 0.5
    tau: float = 1.0
    views: int = 10
    teacher_batch: int = 64
    init: Literal["scratch", "teacher"] = "scratch"

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"--distill.loss {self.loss!r}: expected one of {', '.join(LOSSES)}")
        if self.init not in ("scratch", "teacher"):
            raise ValueError(f"--distill.init {self.init!r}: expected scratch or teacher")
        check_ranges("distill", [
            ("alpha", self.alpha, is_number(self.alpha) and 0 <= self.alpha <= 1, "in [0, 1]"),
            ("tau", self.tau, is_number(self.tau) and self.tau > 0, "> 0"),
            ("views", self.views, isinstance(self.views, int) and not isinstance(self.views, bool)
             and self.views >= 1, "1 or more"),
            ("teacher_batch", self.teacher_batch, isinstance(self.teacher_batch, int)
             and self.teacher_batch >= 1, "1 or more"),
        ])


def _class_map(teacher_classes: list[str], classes: list[str], teacher: str) -> list[int]:
    """For each of the data's classes, the teacher's output that scores it (matched by name)."""
    if sorted(teacher_classes) != sorted(classes):
        missing = [c for c in classes if c not in teacher_classes][:5]
        lacks = f" (the teacher lacks {', '.join(missing)})" if missing else ""
        raise ValueError(f"{one_line(teacher)}: the teacher has {len(teacher_classes)} classes, the data "
                         f"{len(classes)}{lacks}; fine-tune it on the data first (vitkit finetune "
                         f"{one_line(teacher)} --data ...)")
    return [teacher_classes.index(c) for c in classes]


@dataclass
class Lessons:
    """What the teacher taught, ready for any number of students: their Data (the taught views,
    the validation split at the student's size) and the run's distill entry."""

    data: Data
    entry: dict
    seconds: float  # opening the teacher, reading the data and computing the views
    student: ViT | None = None  # the student cut from the teacher (options.init "teacher")


def lessons(teacher: str | Path, cfg: TrainConfig, options: DistillOptions | None = None,
            load: LoadOptions | None = None, log=print) -> Lessons:
    """The teacher's views for `cfg` (its data, augmentation, student model and run settings),
    to pass to several distill(..., lessons=...) calls (a comparison of losses pays the teacher
    once). The views depend on the data, the augmentation, the student's size, the seed and
    options.views; the loss, alpha and tau are the student's."""
    opts = options or DistillOptions()
    opts.validate()
    cfg.validate()
    device = pick_device(cfg.run.device)
    t0 = time.perf_counter()
    data, entry, student = _lessons(str(teacher), load or LoadOptions(), cfg, opts, device, log)
    return Lessons(data, entry, time.perf_counter() - t0, student)


def _lessons(teacher: str, load: LoadOptions, cfg: TrainConfig, opts: DistillOptions, device: torch.device,
             log=print) -> tuple[Data, dict, ViT | None]:
    """The student's Data, the run's distill entry and the student cut from the teacher (see
    Lessons)."""
    if cfg.data.resize == "keep":  # the views are stored as one tensor at the student's size
        raise ValueError("distillation: --data.resize keep is not supported (use squash or crop)")
    if cfg.augment.progressive:  # the teacher's answers are computed once per view
        raise ValueError("distillation: --augment.progressive is not supported (the views are made once, "
                         "at the student's size)")
    opened = open_model(teacher, load)
    tcfg, tspec = opened.model.config, opened.spec
    data = replace(cfg.data, channels=tspec.channels, mean=list(tspec.mean), std=list(tspec.std))
    geometry = cfg.model
    if opts.init == "teacher":
        if not isinstance(opened.model, ViT):
            raise ValueError(f"{one_line(teacher)}: --distill.init teacher needs a ViT teacher (opened in "
                             f"PyTorch), not an exported graph")
        geometry = ModelSpec(patch_size=tcfg.patch_size)
        if data.image_size is None:
            data = replace(data, image_size=default_size(opened.model))
    small = load_data(data, cfg.augment, geometry)  # the student's size and validation images
    small.require_labels(str(data.path or data.dataset), "distillation")
    if is_multilabel(small):
        raise ValueError("distillation: multi-label data (multi-hot labels) are not supported; "
                         "train with vitkit train")
    class_map = _class_map(opened.classes, small.classes, teacher)
    tsize, ssize = tcfg.image_hw, small.spec.image_size
    # photos are read again at the teacher's size; small images are upsampled on the fly
    big = load_data(replace(data, image_size=max(tsize)), cfg.augment) if small.photos and tsize != ssize \
        else small
    n = len(big.train)
    aug = big.batch_augment(cfg.augment)
    if opts.views > 1 and _identity(aug):
        log(f"augmentation is off: one view, not {opts.views} (every view would be the same)")
        opts = replace(opts, views=1)
    need = views_bytes(n, opts.views, tspec.channels, ssize, len(small.classes))
    if need > data.cache_gb * 2**30 * VIEWS_MEMORY:
        raise ValueError(f"--distill.views {opts.views}: {n:,} images x {opts.views} views at "
                         f"{ssize[0]}x{ssize[1]} take {need / 2**30:.1f} GiB in memory; use fewer views")
    model = opened.model.to(device)
    teacher_cost = sum(p.numel() for p in model.parameters()) if isinstance(model, ViT) else None
    log(f"teacher {one_line(teacher)}: {tsize[0]}x{tsize[1]}, {len(opened.classes)} classes; "
        f"student at {ssize[0]}x{ssize[1]}; {opts.views} views x {n:,} training images")
    key = views_key(model if isinstance(model, ViT) else None, tspec, big.train, class_map, aug, opts.views,
                    tsize, ssize, cfg.run.precision, cfg.run.seed)
    path = views_path(data.cache_dir, key) if key else None
    views = read_views(path, small.classes) if path else None
    if views is None:
        runner = prepare(model, device, cfg.run.precision, engine="auto", images=n * opts.views)
        log(f"teacher runs on {runner.engine}, {runner.precision}")
        views = teach(runner, big.train, aug, opts.views, small.classes, class_map,
                      list(tspec.mean), list(tspec.std), tsize, ssize, opts.teacher_batch, device,
                      cfg.run.seed, cfg.data.workers if not big.in_memory else 0, log)
        if path is not None and need <= data.cache_gb * 2**30:
            write_views(path, views)
    else:
        log(f"teacher's views read from {path}")
    agree = _agreement(views, n, len(small.classes))
    log(f"teacher agrees with the labels on {agree:.2%} of the unaugmented training images")
    student = Data(views, small.val, small.classes, small.spec, small.notes, geometry=small.geometry,
                   augment=AugmentConfig(crop="none", flip=False), photos=small.photos)
    entry = {"teacher": str(teacher), "teacher_size": list(tsize), "loss": opts.loss, "alpha": opts.alpha,
             "tau": opts.tau, "views": opts.views, "teacher_batch": opts.teacher_batch,
             "teacher_agreement": round(agree, 4),
             "load": {k: v for k, v in vars(load).items() if v is not None}}
    if teacher_cost is not None:
        entry["teacher_parameters"] = teacher_cost
    cut = None
    if opts.init == "teacher":
        entry["init"] = "teacher"
        layers = cfg.model.num_layers or default_layers(opened.model)
        cut = cut_from_teacher(opened.model.cpu(), layers, ssize, class_map)
    return student, entry, cut


def _identity(aug: AugmentConfig) -> bool:
    """Whether the augmentation leaves every image as it is."""
    no_crop = aug.crop == "none" or (aug.crop == "pad" and aug.pad == 0)  # pad None: default_pad
    return no_crop and not (aug.flip or aug.randaugment or aug.erasing or aug.mixup or aug.cutmix)


def _agreement(views: TaughtViews, n: int, k: int) -> float:
    rows = views.labels[:n]
    return float((rows[:, :k].argmax(1) == rows[:, k:].argmax(1)).float().mean())


def distill(teacher: str | Path | None, data: DataConfig | None = None, model: ModelSpec | None = None,
            options: DistillOptions | None = None, optim: OptimConfig | None = None,
            augment: AugmentConfig | None = None, run: RunConfig | None = None,
            load: LoadOptions | None = None, resume: str | Path | None = None, on_step=None,
            lessons: Lessons | None = None) -> RunResult:
    """Train a student (`model`: a ModelSpec; default: vitkit train's model for the data) on
    `data` taught by `teacher` (anything vitkit.open_model opens, with `load`); returns the run
    result. `lessons`: views already computed by vitkit.distill.lessons for the same settings.
    resume=RUN_DIR continues a distillation run exactly (the teacher's views are computed
    again, identically)."""
    if resume is not None:
        return _resume(Path(resume), on_step)
    if teacher is None:
        raise ValueError("distill needs a TEACHER (a model vitkit opens), or --resume RUN_DIR")
    opts = options or DistillOptions()
    opts.validate()
    model = model or ModelSpec()
    if opts.init == "teacher":
        given = [f.name for f in dataclasses.fields(model) if f.name != "num_layers"
                 and getattr(model, f.name) is not None]
        if given:
            raise ValueError(f"--distill.init teacher: the student is the teacher's architecture; only "
                             f"--model.num_layers may be set (not {', '.join(given)})")
        if opts.loss == "token":
            raise ValueError("--distill.loss token needs a new student with a distillation token "
                             "(--distill.init scratch)")
        if optim is None or optim == OptimConfig():
            optim = CUT_OPTIM
    if opts.loss == "token" and model.distill_token is None:
        model = replace(model, distill_token=True)
    run = run or RunConfig(out="runs/distill")
    cfg = TrainConfig(data=data or DataConfig(), model=model, optim=optim or OptimConfig(),
                      augment=augment or AugmentConfig(), run=run)
    cfg.validate()
    if opts.loss == "token" and run.strategy == "fsdp":
        raise ValueError("--distill.loss token: not available with --run.strategy fsdp (use ddp, or loss "
                         "hard or soft)")
    if not model.distill_token and opts.loss == "token":
        raise ValueError("--distill.loss token needs --model.distill_token true (or unset)")
    device = pick_device(run.device)
    if run.threads:
        torch.set_num_threads(run.threads)
    if lessons is not None:
        if (lessons.student is not None) != (opts.init == "teacher"):
            raise ValueError(f"--distill.init {opts.init}: the lessons were made for init "
                             f"{'teacher' if lessons.student is not None else 'scratch'}")
        views = lessons.entry["views"]
        student_data, entry = lessons.data, {**lessons.entry, "loss": opts.loss, "alpha": opts.alpha,
                                             "tau": opts.tau}
        opts, cut = replace(opts, views=views), lessons.student
    else:
        student_data, entry, cut = _lessons(str(teacher), load or LoadOptions(), cfg, opts, device)
    if run.epochs is None:  # the image passes vitkit train would make, spread over the views
        views = entry["views"]
        passes, _ = default_epochs(None, len(student_data.train) // views, run.time_budget)
        cfg = replace(cfg, run=replace(run, epochs=max(1, round(passes / views))))
    if cut is not None:
        student = copy.deepcopy(cut)  # each student of the same lessons starts from the same weights
    else:
        spec = student_data.spec
        config = cfg.model.build_config(spec.image_size, spec.channels, len(student_data.classes),
                                        student_data.geometry)
        with torch.random.fork_rng():  # the student's first weights follow the run's seed alone
            torch.manual_seed(cfg.run.seed)
            student = ViT(config)
    size, teacher_size = student.num_params(), entry.get("teacher_parameters")
    if teacher_size and size >= teacher_size:
        warnings.warn(f"the student ({size:,} parameters) is as large as or larger than the teacher "
                      f"({teacher_size:,}): distillation usually teaches a smaller model", VitkitWarning,
                      stacklevel=2)
    objective = Distillation(opts.loss, len(student_data.classes), opts.alpha, opts.tau)
    return fit(cfg, model=student, extra_meta={KEY: entry, OBJECTIVE_KEY: "distill"}, objective=objective,
               data=student_data, on_step=on_step)


def _resume(run_dir: Path, on_step=None) -> RunResult:
    meta = read_meta(run_dir)
    entry = meta.get(KEY)
    if not isinstance(entry, dict) or "teacher" not in entry:
        raise ValueError(f"{run_dir}: not a distillation run (no {KEY!r} entry in config.json)")
    cfg = stored_config(run_dir, meta)
    try:
        opts = DistillOptions(**{k: entry[k] for k in ("loss", "alpha", "tau", "views", "teacher_batch")},
                              init=entry.get("init", "scratch"))
        load = LoadOptions(**entry.get("load", {}))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{run_dir}/config.json: bad {KEY!r} entry ({e})") from None
    device = pick_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    student_data, _, _ = _lessons(entry["teacher"], load, cfg, opts, device)
    return fit(None, resume=run_dir, data=student_data, on_step=on_step)  # objective: from_meta

