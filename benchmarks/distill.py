"""Distillation: a small student taught by a fine-tuned DeiT-Tiny against the same student
trained on labels alone, at equal epochs and at equal wall time, and how fast each one answers.

    python benchmarks/distill.py --data hymenoptera
    python benchmarks/distill.py --data cifar10 --per-class 200 --teacher-size 112
    python benchmarks/distill.py --data folder --path TRAIN_DIR --val-path VAL_DIR  # any photo set

Teacher: the shared ImageNet DeiT-Tiny (timm layout) fine-tuned on the data with
`vitkit finetune --mode linear` (the head on frozen features; --load.preprocess deit) at
--teacher-size. Student: the model `vitkit train` builds for the data (photos: 64 px, patch 8;
CIFAR: 32 px, conv stem), every training default. The teacher labels --views augmented views of
every training image once (`vitkit.distill.lessons`); every student row trains on those same
views for the same epochs (the default: vitkit train's image passes spread over the views):
labels (no teacher), hard, soft (alpha 0.5, tau 1) and token (DeiT's distillation token).
"labels, equal time" trains the labels-only student for as many more epochs as the teacher's
views cost; "vitkit train" is the ordinary run (a fresh augmentation every epoch, its default
epochs). Speed: images/s of the published models at batch 1 and 8 in one process (fp32 eager,
vitkit's default inference path as predict and serve run it, ONNX int8), median of 5 rounds.
CPU named, bf16 / AMX said. --init teacher cuts the student from the teacher
(vitkit.distill.student) instead of building a new one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vitkit.data.augment import AugmentConfig  # noqa: E402
from vitkit.data.pipeline import DataConfig  # noqa: E402
from vitkit.distill import DistillOptions, distill, lessons  # noqa: E402
from vitkit.finetune import finetune  # noqa: E402
from vitkit.loading import LoadOptions, open_model  # noqa: E402
from vitkit.notices import plain_warnings  # noqa: E402
from vitkit.precision import cpu_has_amx, cpu_name, native_bf16  # noqa: E402
from vitkit.training import RunConfig, TrainConfig, fit  # noqa: E402
from vitkit.training.config import ModelSpec  # noqa: E402

SHARED = ROOT.parent / "shared"
DEIT = SHARED / "models" / "deit-tiny-patch16-224-in1k.safetensors"
WORK = Path(tempfile.gettempdir())


def hymenoptera() -> DataConfig:
    dest = WORK / "vitkit-hymenoptera"
    root = dest / "hymenoptera"
    if not (root / "val").is_dir():
        archive = SHARED / "datasets" / "hymenoptera.tar.gz"
        if not archive.is_file():
            raise SystemExit(f"{archive}: not found")
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        found = next(p.parent for p in dest.rglob("val") if (p.parent / "train").is_dir())
        if found != root:
            found.rename(root)
    return DataConfig(dataset="folder", path=str(root / "train"), val_path=str(root / "val"),
                      cache_dir=str(dest / "cache"))


def cifar10(per_class: int, val_per_class: int) -> DataConfig:
    dest = WORK / "vitkit-cifar10"
    data = dest / "cifar10"
    if not (data / "test").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = SHARED / "datasets" / "cifar10-jpg.tar.gz"
        subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True)
    # a folder of links to the first images of each class (sorted names), so only those are decoded
    subset = dest / f"subset-{per_class}-{val_per_class}"
    for split, src, n in (("train", data / "train", per_class), ("val", data / "test", val_per_class)):
        for cls in sorted(d for d in src.iterdir() if d.is_dir()):
            out = subset / split / cls.name
            if out.is_dir():
                continue
            tmp = out.with_name(cls.name + ".tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.iterdir())[:n]:
                if not (tmp / f.name).exists():
                    (tmp / f.name).symlink_to(f)
            tmp.rename(out)
    return DataConfig(dataset="folder", path=str(subset / "train"), val_path=str(subset / "val"),
                      cache_dir=str(dest / "cache"))


def speed(call, size: tuple[int, int], channels: int, batch: int, rounds: int = 5,
          seconds: float = 1.0) -> float:
    """Images/s of call(x) for one batch size (median of rounds)."""
    x = torch.randn(batch, channels, *size)
    rates = []
    with torch.inference_mode():
        for _ in range(2):
            call(x)
        for _ in range(rounds):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                call(x)
                n += batch
            rates.append(n / (time.perf_counter() - t0))
    return sorted(rates)[len(rates) // 2]


def speeds(path: Path, work: Path) -> dict[str, tuple[float, float]]:
    """(batch 1, batch 8) images/s: fp32 eager, vitkit's default (`prepare` at precision and
    engine "auto", as predict and serve run it), ONNX int8."""
    from vitkit.export import export_file
    from vitkit.inference import prepare

    out = {}
    for name in ("fp32", "default", "int8"):
        if name == "int8":
            opened = open_model(export_file(path, work / f"{path.name}-int8.onnx", int8=True).path)
            call = opened.model
        else:
            opened = open_model(path)
            call = opened.model.eval() if name == "fp32" else \
                prepare(opened.model, "cpu", "auto", engine="auto", images=None)
        c = opened.spec
        out[name] = tuple(speed(call, c.image_size, c.channels, b) for b in (1, 8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["hymenoptera", "cifar10", "folder"], default="hymenoptera")
    ap.add_argument("--path", help="folder: the training images (class/*.jpg)")
    ap.add_argument("--val-path", help="folder: the validation images (class/*.jpg)")
    ap.add_argument("--per-class", type=int, default=200, help="cifar10: training images per class")
    ap.add_argument("--val-per-class", type=int, default=100, help="cifar10: test images per class")
    ap.add_argument("--teacher-size", type=int, default=224)
    ap.add_argument("--views", type=int, default=DistillOptions.views)
    ap.add_argument("--losses", default="labels,hard,soft,token")
    ap.add_argument("--epochs", type=int, default=None,
                    help="student epochs over the views (default: vitkit's)")
    ap.add_argument("--student", type=json.loads, default={},
                    help='the student\'s --model options as JSON, e.g. \'{"hidden_size": 192}\' '
                         "(default: vitkit train's model for the data)")
    ap.add_argument("--mixup", type=float, default=0.0, help="MixUp alpha of the views")
    ap.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha of the views")
    ap.add_argument("--init", choices=["scratch", "teacher"], default="scratch",
                    help="teacher: the student is the teacher's first layers at a lower resolution "
                         "(--student may set num_layers only)")
    ap.add_argument("--alpha", type=float, default=DistillOptions.alpha, help="soft: the teacher's weight")
    ap.add_argument("--tau", type=float, default=DistillOptions.tau, help="soft: the temperature")
    args = ap.parse_args()
    plain_warnings()
    torch.manual_seed(0)
    if args.data == "folder":
        if not (args.path and args.val_path):
            raise SystemExit("--data folder needs --path and --val-path")
        data = DataConfig(dataset="folder", path=args.path, val_path=args.val_path)
    else:
        data = hymenoptera() if args.data == "hymenoptera" else cifar10(args.per_class, args.val_per_class)
    work = WORK / f"vitkit-distill-{args.data}"
    work.mkdir(exist_ok=True)

    t0 = time.perf_counter()
    teacher = finetune(DEIT, data, image_size=args.teacher_size, mode="linear",
                       run=RunConfig(out=str(work / "teacher"), overwrite=True, progress=False),
                       options=LoadOptions(preprocess="deit"))
    teacher_s = time.perf_counter() - t0
    rows = [("teacher: DeiT-Tiny, linear fine-tuning", teacher.val_acc, None, teacher_s, work / "teacher")]

    run = RunConfig(out=str(work / "s"), overwrite=True, progress=False, epochs=args.epochs)
    student, augment = ModelSpec(**args.student), AugmentConfig(mixup=args.mixup, cutmix=args.cutmix)
    taught = lessons(teacher.run_dir, TrainConfig(data=data, model=student, augment=augment, run=run),
                     DistillOptions(views=args.views, init=args.init))
    print(f"teacher's views: {taught.seconds:.1f}s", flush=True)
    times = {}
    for loss in args.losses.split(","):
        t0 = time.perf_counter()
        r = distill(teacher.run_dir, data, student, DistillOptions(loss=loss, alpha=args.alpha, tau=args.tau,
                                                                   init=args.init),
                    augment=augment, run=replace(run, out=str(work / loss)), lessons=taught)
        times[loss] = time.perf_counter() - t0
        extra = 0.0 if loss == "labels" else taught.seconds
        rows.append((f"student: {loss}" + (" (no teacher)" if loss == "labels" else ""), r.val_acc, r.epoch,
                     times[loss] + extra, r.run_dir))
    if "labels" in times:  # as long as a taught student's whole run, teacher's views included
        epochs = rows[1][2]
        longer = max(epochs, round(epochs * (times["labels"] + taught.seconds) / times["labels"]))
        t0 = time.perf_counter()
        r = distill(teacher.run_dir, data, student, DistillOptions(loss="labels", init=args.init),
                    augment=augment, run=replace(run, out=str(work / "labels-long"), epochs=longer),
                    lessons=taught)
        rows.append(("student: labels, equal time", r.val_acc, r.epoch, time.perf_counter() - t0, r.run_dir))
    t0 = time.perf_counter()
    r = fit(TrainConfig(data=data, model=student if args.init == "scratch" else ModelSpec(), augment=augment,
                        run=RunConfig(out=str(work / "train"), overwrite=True, progress=False)))
    rows.append(("student: vitkit train (fresh augmentation, its epochs)", r.val_acc, r.epoch,
                 time.perf_counter() - t0, r.run_dir))

    measured = {str(rows[0][4]): speeds(rows[0][4], work)}
    student = next((row[4] for row in rows if "token" in row[0]), rows[1][4])
    measured[str(student)] = speeds(student, work)
    plain = next((row[4] for row in rows if row[0].startswith("student: hard")), None)
    if plain is not None:
        measured[str(plain)] = speeds(plain, work)

    n_views = taught.entry["views"]
    print()
    print(f"{args.data}: {len(taught.data.train) // n_views:,} training images x {n_views} views; CPU "
          f"{cpu_name()}, {torch.get_num_threads()} threads, native bf16 {native_bf16('cpu')}, "
          f"AMX {cpu_has_amx()}; teacher agrees with the labels on {taught.entry['teacher_agreement']:.1%} "
          f"of the training images")
    print()
    print("| model | val acc | epochs | wall s | img/s fp32 b1 / b8 | default b1 / b8 | int8 b1 / b8 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, acc, epochs, secs, path in rows:
        s = measured.get(str(path))
        cols = " | ".join(f"{v[0]:.0f} / {v[1]:.0f}" for v in s.values()) if s else "| ".join([""] * 3)
        print(f"| {name} | {acc:.2%} | {epochs or ''} | {secs:.0f} | {cols} |")


if __name__ == "__main__":
    main()
