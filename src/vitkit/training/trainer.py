"""The training loop: data, model, optimizer and schedule, checkpoints that survive anything.

A run directory holds:
- config.json: the model config, classes, input spec and the resolved training config (a
  multi-label run adds its decision threshold, chosen on the validation split);
- train.yaml: the same training config, ready for ``vitkit train --config``;
- model.safetensors: the weights alone (the EMA weights when EMA is on);
- state.pt: everything needed to continue exactly (weights, optimizer, EMA, RNG states,
  epoch, step within the epoch, best metric, metrics so far), loadable with weights_only;
- metrics.csv, curves.png, and TensorBoard event files when tensorboard is installed.
Every file is replaced atomically. SIGINT/SIGTERM finish the current step, save, and exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import RECIPE_NAME, WEIGHTS_NAME, read_config, write_meta
from ..compile import compile_model
from ..config import patch_problem
from ..data.augment import BatchAugment
from ..data.inputs import InputPlan
from ..data.pipeline import Data, array_batches, epoch_steps, read_data
from ..evaluation import evaluate_model, evaluate_multilabel
from ..files import atomic_save_tensors, atomic_write_bytes
from ..info import forward_macs
from ..metrics import best_threshold
from ..model import ViT
from ..multilabel import DEFAULT_THRESHOLD, KEY, entry, is_multilabel, threshold_of
from ..plan import model_geometry, plan_input
from ..precision import autocast, native_bf16, pick_device, training_precision
from .batches import batch_size_for, default_epochs, train_batches
from .config import TrainConfig
from .curves import plot_curves
from .distributed import Dist, any_rank, barrier, init_distributed, shutdown
from .objectives import SUPERVISED, Classification, MultiLabel
from .planner import default_budget, measure_save, measure_steps, plan_length
from .records import EpochTally, TensorBoard, epoch_line, prepare_run_dir, write_metrics
from .resume import resumed
from .schedule import build_optimizer, lr_factor
from .state import RunState, rng_state, seed_everything, set_rng_state
from .stop import StopFlag, check_finite
from .strategies import make_strategy


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "finished", "interrupted", "budget", or "done" (resumed when already finished)
    epoch: int
    step: int
    val_acc: float | None
    best_acc: float | None
    metrics: list[dict] = field(default_factory=list)
    train_images: int | None = None  # images in the training split
    val_metric: str = "accuracy"  # what val_acc and best_acc hold: "accuracy", or "mAP" (multi-label)


CURVES_EVERY_S = 30.0  # curves.png is redrawn at most this often while a run goes on


class Trainer:
    def __init__(self, cfg: TrainConfig, model: ViT | None = None, resume: str | Path | None = None,
                 extra_meta: dict | None = None, on_step=None, objective=None, data: Data | None = None,
                 plan: InputPlan | None = None,
                 measured_steps: tuple[dict[str, float], dict[str, float]] | None = None):
        """Set a run up in the order its random state needs: device and processes, the seed, data,
        objective, model, optimizer, augmentation, batch size and epochs, then the run directory
        (a resumed run's state is loaded last, over everything set up before it)."""
        self.cfg = cfg
        self.started = time.perf_counter()  # what planning the run's length counts as spent
        self.curves_drawn = self.started
        self.on_step = on_step  # called as on_step(trainer) after every optimizer step
        self.measured_steps = measured_steps  # (step, eval image) seconds by precision: given, not timed
        self.set_up_device()
        self.run_dir = Path(resume) if resume else Path(cfg.run.out)
        # the run's own architecture, whatever built it (fine-tuning: the source model's, not cfg.model's)
        stored = read_config(self.run_dir) if resume and model is None else None
        seed_everything(cfg.run.seed + self.dist.rank, cfg.run.deterministic)
        self.set_up_data(data, extra_meta, plan)
        self.set_up_objective(objective)
        self.set_up_model(model, stored, bool(resume))
        self.set_up_optimizer()
        self.set_up_augmentation()
        self.set_up_length(bool(resume))
        self.set_up_run_dir(resume)

    def set_up_device(self) -> None:
        """The device, the process group of a distributed run, and the CPU threads."""
        run = self.cfg.run
        self.device = pick_device(run.device)
        self.dist: Dist = init_distributed(self.device.type, need_group=run.strategy == "fsdp")
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if run.threads:
            torch.set_num_threads(run.threads)

    def set_up_data(self, data: Data | None, extra_meta: dict | None, plan: InputPlan | None = None) -> None:
        """The images: given in memory, or loaded from the config (once per host)."""
        self.extra_meta = dict(extra_meta or {})
        if data is not None:  # images given in memory: the stored DataConfig cannot read them back
            self.extra_meta["data_source"] = "in memory"
        elif self.extra_meta.get("data_source") == "in memory":
            raise ValueError(f"{self.run_dir}: trained on images given in memory; pass them again "
                             "(vitkit.training.fit(..., data=...)) to continue it")
        # the decoded-image cache is per host (~/.cache/vitkit): the first process of each host
        # (LOCAL_RANK 0) builds it while the others wait, then they read it
        first_on_host = self.dist.local_rank == 0
        if self.dist.enabled and not first_on_host:
            barrier(self.dist)
        cfg = self.cfg
        if data is None:  # planned once, here or by the caller (fine-tuning), then read as planned
            data = read_data(cfg.data, plan or plan_input(cfg.data, cfg.augment, cfg.model))
        self.data: Data = data
        if self.dist.enabled and first_on_host:
            barrier(self.dist)
        self.log(*self.data.notes)

    def set_up_objective(self, objective) -> None:
        """What is learnt (head, loss, metric): multi-hot labels pick MultiLabel unless one is given."""
        multi_hot = is_multilabel(self.data)
        if objective is not None and objective.name in SUPERVISED and \
                (objective.name == "multilabel") != multi_hot:
            raise ValueError(f"multi-hot labels ({len(self.data.classes)} tags) need the multilabel "
                             f"objective, not {type(objective).__name__}" if multi_hot else
                             "the multilabel objective needs multi-hot labels (N, tags), not class indices")
        self.objective = objective or (MultiLabel() if multi_hot else Classification())
        self.supervised = self.objective.name in SUPERVISED
        self.multilabel = self.objective.name == "multilabel"  # sigmoid per tag, mAP, a stored threshold
        # a multi-label run's decision threshold: the stored one of a resumed run until evaluated
        self.threshold = threshold_of(self.extra_meta) or DEFAULT_THRESHOLD
        if self.supervised:
            self.data.require_labels(str(self.cfg.data.path or self.cfg.data.dataset), "supervised training",
                                     "; vitkit pretrain learns from unlabelled images")

    def set_up_model(self, model: ViT | None, stored, resume: bool) -> None:
        """The model (given, stored by a resumed run, or built for the data), its training
        precision and the strategy that places it."""
        cfg = self.cfg
        spec = self.data.spec  # images given in memory: the default geometry for their size
        geometry = self.data.geometry or model_geometry(spec.image_size, vars(cfg.model))
        config = model.config if model is not None else stored or cfg.model.build_config(
            spec.image_size, spec.channels, len(self.data.classes) if self.supervised else 0, geometry)
        self.precision = training_precision(cfg.run.precision, self.device, forward_macs(config))
        self.strategy = make_strategy(cfg.run.strategy, self.dist, self.device, self.precision)
        on_meta = self.strategy.build_on_meta(resume)
        with torch.device("meta") if on_meta and model is None else contextlib.nullcontext():
            if model is None:
                model = ViT(config)
        self.check_model_fits_data(model)
        if cfg.optim.train_only == "head":
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith("head."))
        self.model = self.strategy.setup(model, self.objective, self.data.spec,
                                         cfg.run.activation_checkpointing, resume)
        c = self.model.config
        self.log(f"model: {c.num_layers} layers, D {c.hidden_size}, MLP {c.mlp_size}, {c.num_heads} heads, "
                 f"patch {c.patch_size} ({c.grid_size[0]}x{c.grid_size[1]} grid), stem {c.stem}, "
                 f"{sum(p.numel() for p in self.model.parameters()):,} parameters; {self.device.type}, "
                 f"{self.precision}"
                 + (f"; {cfg.run.strategy} over {self.dist.world} processes" if self.dist.enabled else "")
                 + (f"; activation checkpointing: {cfg.run.activation_checkpointing}"
                    if cfg.run.activation_checkpointing != "none" else ""))

    def set_up_optimizer(self) -> None:
        """The optimizer, the EMA and torch.compile."""
        self.optimizer = build_optimizer(self.model, self.cfg.optim)
        self.ema = self.strategy.make_ema(self.cfg.optim.ema)
        # in place, after the EMA copied the model: a copy of a compiled module would call the original
        self.compiled = compile_model(self.model, self.cfg.run.compile, label="model for training")

    def set_up_augmentation(self) -> None:
        # a streamed random resized crop was taken on decoding, at full resolution
        spec = self.data.spec
        self.augment = BatchAugment(self.data.batch_augment(self.cfg.augment), len(self.data.classes),
                                    spec.mean, spec.std, size=spec.batch_size_hw,
                                    stride=self.model.config.patch_size)

    def set_up_length(self, resume: bool = False) -> None:
        """The batch size, the epochs and the steps they make: planned against the clock
        (vitkit.training.planner) when the run sets no epochs."""
        cfg, n_train = self.cfg, len(self.data.train)
        self.batch_size, note = batch_size_for(cfg.run.batch_size, n_train, self.dist, cfg.optim.accumulate)
        self.log(*([note] if note else []))
        planned = cfg.run.epochs is None and self.data.in_memory and not (
            resume or self.dist.enabled or self.compiled)
        self.epochs, note = default_epochs(cfg.run.epochs, n_train, cfg.run.time_budget, planned)
        self.log(*([note] if note else []))
        self.steps_per_epoch = epoch_steps(self.data.train, self.batch_size, self.dist.world)
        if planned:
            self.plan_length()
        self.total_steps = self.steps_per_epoch * self.epochs

    def plan_length(self) -> None:
        """Time a few steps in each precision the run may train in, keep the faster, and fit the
        epochs into the budget; the choice goes into the run's recipe and config.json."""
        cfg = self.cfg
        precisions = [self.precision]
        if cfg.run.precision == "auto" and self.device.type == "cpu" and native_bf16(self.device):
            precisions = ["fp32", "bf16"]
        x, y = next(array_batches(self.data.train, self.batch_size, 0, cfg.run.seed, shuffle=False))
        smoothing = cfg.augment.label_smoothing

        def step_loss(net, images, labels):  # a training step as the loop takes it, augmentation included
            return self.objective.loss(net, *self.augment(images, labels), smoothing)

        step_s, eval_s = self.measured_steps or measure_steps(
            self.strategy.net, step_loss, x.to(self.device), y.to(self.device), precisions, self.device,
            lambda module: build_optimizer(module, cfg.optim), cfg.optim.clip_grad)
        budget = cfg.run.time_budget or default_budget(len(self.data.train))
        save_s = 0.0 if self.measured_steps else measure_save(self.model)
        plan = plan_length(step_s, eval_s, self.steps_per_epoch, len(self.data.val), self.epochs, budget,
                           time.perf_counter() - self.started, cfg.run.eval_every, save_s)
        self.epochs, self.precision = plan.epochs, plan.precision
        self.strategy.precision = plan.precision
        self.cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, epochs=plan.epochs,
                                                                    precision=plan.precision))
        self.extra_meta["plan"] = plan.to_dict()
        c = self.model.config
        self.log(plan.line(f"{c.image_hw[0]}x{c.image_hw[1]}, patch {c.patch_size}, {c.num_layers} layers"))

    def set_up_run_dir(self, resume: str | Path | None) -> None:
        """The run's state: continued from the run directory, or a new one claimed."""
        self.state = RunState()
        self.tb = TensorBoard(self.run_dir)
        if resume:
            self.load_state()
        elif self.dist.main:
            prepare_run_dir(self.run_dir, self.cfg.run.overwrite)

    # -- logging
    def log(self, *lines: str) -> None:
        if self.dist.main:
            for line in lines:
                print(line, flush=True)

    def check_model_fits_data(self, model: ViT) -> None:
        c, spec = model.config, self.data.spec
        problems = []
        if self.supervised and c.num_classes != len(self.data.classes):
            problems.append(f"model has {c.num_classes} classes, data has {len(self.data.classes)} "
                            f"({', '.join(self.data.classes[:10])})")
        if c.num_channels != spec.channels:
            problems.append(f"model takes {c.num_channels} channels, data has {spec.channels}")
        if patch_problem(spec.image_size, c.patch_size):
            problems.append(patch_problem(spec.image_size, c.patch_size))
        if problems:
            raise ValueError("model does not fit the data: " + "; ".join(problems))

    def meta(self) -> dict:
        """What config.json holds beside the model config (vitkit.checkpoint's layout)."""
        classes = self.data.classes if self.supervised else []  # an encoder: no classes to name
        meta = {"classes": classes, "data": self.data.spec.to_dict(), "train": self.cfg.to_dict(),
                **self.extra_meta}
        meta.pop(KEY, None)
        if self.multilabel:
            meta[KEY] = entry(self.threshold, "micro F1 on the validation split, one threshold for all tags")
        return meta

    def eval_model(self) -> torch.nn.Module | None:
        """The model to evaluate (FSDP: every rank must call; None but on rank 0)."""
        return self.strategy.eval_model(self.ema, self.state.step)

    def progress_state(self) -> dict:
        """Everything a checkpoint holds besides weights and optimizer state."""
        return {**self.state.to_dict(), "rng": rng_state(), "train": self.cfg.to_dict(),
                "world": self.dist.world}

    def save(self, final: bool = False) -> None:
        """Write every run file atomically; the training state last, so it never points past
        the weights (FSDP: every rank takes part in gathering the weights and writing the state).
        curves.png is drawn when the run ends or stops and at most every CURVES_EVERY_S between:
        drawing it takes longer than an epoch of a small run."""
        import yaml

        weights = self.strategy.published_state(self.ema, self.objective, self.state.step)
        if self.dist.main:
            d = self.run_dir
            write_meta(d, self.objective.published(self.model).config, self.meta())
            atomic_write_bytes(d / RECIPE_NAME, yaml.safe_dump(self.cfg.to_dict(), sort_keys=False).encode())
            atomic_save_tensors(d / WEIGHTS_NAME, weights)
            draw = final or time.perf_counter() - self.curves_drawn >= CURVES_EVERY_S
            write_metrics(d, self.state.metrics, plot_curves if draw else None)
            self.curves_drawn = time.perf_counter() if draw else self.curves_drawn
        self.strategy.save_state(self.run_dir, self.optimizer, self.ema, self.progress_state())

    def load_state(self) -> None:
        st = self.strategy.load_state(self.run_dir, self.optimizer, self.ema)
        if self.dist.rank == 0:
            set_rng_state(st["rng"])
        self.state = RunState.from_dict(st)
        if self.finished():
            budget = self.cfg.run.time_budget
            self.log(f"{self.run_dir} is finished ({self.state.epoch} of {self.epochs} epochs"
                     + (f", its {budget} min budget spent" if budget else "")
                     + "): nothing to resume, nothing written")
            return
        saved_by = f" (saved by {st['world']} processes)" if self.strategy.sharded else ""
        self.log(f"resuming {self.run_dir}{saved_by} at {self.state.describe()}")

    def finished(self) -> bool:
        """Whether the run has done all it was set to do (its epochs, or its time budget)."""
        return self.state.epoch >= self.epochs or bool(self.cfg.run.time_budget and self.progress() >= 1.0)

    # -- the loop
    def progress(self) -> float:
        if self.cfg.run.time_budget:
            return min(self.state.elapsed / (60 * self.cfg.run.time_budget), 1.0)
        return self.state.step / max(self.total_steps, 1)

    def set_lr(self) -> float:
        o = self.cfg.optim
        lr = o.lr * lr_factor(self.progress(), o.warmup, o.schedule, o.min_lr_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over a (per-rank) batch, split into accumulation chunks."""
        net = self.strategy.net
        acc = self.cfg.optim.accumulate
        smoothing = self.cfg.augment.label_smoothing
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        for i, (xc, yc) in enumerate(zip(x.chunk(acc), y.chunk(acc), strict=True)):
            with self.strategy.accumulating(i == acc - 1) if acc > 1 else contextlib.nullcontext():
                with autocast(self.device, self.precision):
                    loss, hits = self.objective.loss(net, xc, yc, smoothing)
                (loss / acc).backward()
            loss_sum += loss.detach() / acc
            correct += hits
        if self.cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.strategy.update_ema(self.ema)
        return loss_sum, correct

    def evaluate(self):
        model = self.eval_model()  # FSDP: every rank takes part in gathering it onto rank 0
        if model is None:
            return None
        if not self.supervised:
            return self.objective.evaluate(model, self.data.val, self.data.spec, self.cfg.run.eval_batch_size,
                                           self.device, self.precision)
        workers = self.cfg.data.workers if not self.data.in_memory else 0
        if self.multilabel:
            res = evaluate_multilabel(model, self.data.val, self.data.spec, self.data.classes,
                                      self.cfg.run.eval_batch_size, self.device, self.precision, workers)
            # the threshold the published model answers with: chosen on every evaluation, so the
            # config.json written beside the weights always holds the one for those weights
            res.threshold = self.threshold = best_threshold(res.scores, res.targets)
            return res
        return evaluate_model(model, self.data.val, self.data.spec, self.data.classes,
                              self.cfg.run.eval_batch_size, self.device, self.precision, workers)

    def check_loss(self, loss: float) -> None:
        """Stop at a mean loss that is no longer finite, naming this step."""
        check_finite(loss, self.state.step, self.state.epoch, self.run_dir)

    def run(self) -> RunResult:
        cfg = self.cfg
        status = "finished"
        val_acc = self.state.metrics[-1]["val_acc"] if self.state.metrics else None
        if self.finished():  # a finished run resumed: its files stay as they are
            self.tb.close()
            st = self.state
            return RunResult(self.run_dir, "done", st.epoch, st.step, val_acc, st.best_acc, st.metrics,
                             len(self.data.train), self.val_metric)
        with StopFlag() as stop:
            while self.state.epoch < self.epochs:
                self.model.train()
                start = self.state.batch_in_epoch
                tally = EpochTally(self.dist, self.device, self.steps_per_epoch, start,
                                   f"epoch {self.state.epoch + 1}/{self.epochs}",
                                   show=self.dist.main and cfg.run.progress)
                interrupted = out_of_time = False
                for x, y in train_batches(self.data, self.batch_size, self.state.epoch, start, cfg.run.seed,
                                          self.dist, cfg.data.workers, self.device):
                    lr = self.set_lr()
                    x = x.to(self.device, non_blocking=True)
                    y = y.to(self.device, non_blocking=True)
                    x, y = self.augment(x, y, self.progress())  # the progress sets a growing size
                    loss, correct = self.train_step(x, y)
                    self.state.step += 1
                    self.state.batch_in_epoch += 1
                    self.state.elapsed += tally.add(loss, correct, len(x))
                    if self.on_step is not None:
                        self.on_step(self)
                    epoch_end = self.state.batch_in_epoch == self.steps_per_epoch
                    if tally.pending >= cfg.run.log_every or epoch_end:
                        tally.flush(self.check_loss, lr)
                    if cfg.run.time_budget and self.progress() >= 1.0:
                        out_of_time = True
                    if any_rank(stop.set or out_of_time, self.dist, self.device):
                        interrupted = not out_of_time
                        break
                tally.close()
                if interrupted:
                    self.save(final=True)
                    barrier(self.dist)
                    status = "interrupted"
                    self.log(f"stopped at epoch {self.state.epoch + 1}, step {self.state.step}; "
                             f"saved {self.run_dir}")
                    break
                last = self.state.epoch + 1 == self.epochs or out_of_time
                due = last or (self.state.epoch + 1) % max(cfg.run.eval_every, 1) == 0
                mark = time.perf_counter()  # evaluation and checkpoints count against a time budget too
                res = self.evaluate() if due and (self.dist.main or self.strategy.sharded) else None
                self.state.elapsed += time.perf_counter() - mark
                row = tally.row(self.state.epoch + 1, self.state.step, res,
                                self.optimizer.param_groups[0]["lr"], self.state.elapsed)
                self.state.metrics.append(row)
                if res is not None and res.top1 is not None:
                    val_acc = res.top1
                    self.state.best_acc = max(self.state.best_acc or 0.0, res.top1)
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                self.log(epoch_line(row, self.epochs, self.supervised, self.multilabel))
                mark = time.perf_counter()
                self.save(final=last)
                self.state.elapsed += time.perf_counter() - mark
                if self.dist.main:
                    self.tb.add(row)
                barrier(self.dist)
                if out_of_time:
                    status = "budget"
                    self.log(f"time budget of {cfg.run.time_budget} min reached")
                    break
        self.tb.close()
        st = self.state
        return RunResult(self.run_dir, status, st.epoch, st.step, val_acc, st.best_acc, st.metrics,
                         len(self.data.train), self.val_metric)

    @property
    def val_metric(self) -> str:
        return "mAP" if self.multilabel else "accuracy"


def fit(cfg: TrainConfig | None, model: ViT | None = None, resume: str | Path | None = None,
        extra_meta: dict | None = None, on_step=None, objective=None, data: Data | None = None,
        plan: InputPlan | None = None) -> RunResult:
    """Train (or continue) a run and return where it went and how well it did.

    With resume=RUN_DIR the configuration (and, unless given, the objective and config.json
    entries) stored in that run are used and the run continues from the exact step it
    stopped at; a LoRA fine-tuning run trains its adapters again. `data`: a ready Data (e.g.
    vitkit.data.memory.in_memory(train, val)) instead of reading cfg.data; a run made that way
    is continued by passing the same data again; `plan`: the input plan (vitkit.plan.plan_input)
    of cfg.data, when the caller made it already. Multi-hot labels train the MultiLabel objective.
    """
    if resume is not None:
        cfg, objective, extra_meta = resumed(Path(resume), objective, extra_meta)
    elif cfg is None:
        raise ValueError("fit needs a TrainConfig, or resume=RUN_DIR")
    cfg.validate()  # before any data are read or a model is built
    trainer = Trainer(cfg, model=model, resume=resume, extra_meta=extra_meta, on_step=on_step,
                      objective=objective, data=data, plan=plan)
    try:
        return trainer.run()
    finally:
        shutdown(trainer.dist)
