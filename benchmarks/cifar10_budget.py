"""CIFAR-10 from scratch for a fixed wall-clock budget, from the shared JPEG archive.

    python benchmarks/cifar10_budget.py [--minutes 30] [--pure] [--gpu] [--progressive F] [--scale S]
                                        [--archive PATH]

Extracts the archive under /tmp (once), trains with configs/cifar10.yaml (or the GPU recipe;
--progressive 0 trains the CPU recipe at 32 px throughout, without growing its input),
and prints test accuracy (also with flip test-time augmentation: each image answered with the
mean logits of it and its mirror image), training images/s and the time spent, as a markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vitkit.evaluation import evaluate_path  # noqa: E402
from vitkit.training import TrainConfig, fit  # noqa: E402


def extract(archive: Path, dest: Path) -> Path:
    data = dest / "cifar10"
    if not (data / "test").is_dir():
        if not archive.is_file():
            raise SystemExit(f"{archive}: archive not found")
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=None, help="training budget (default: the recipe's)")
    ap.add_argument("--pure", action="store_true", help="pure ViT: patch embedding without the conv stem")
    ap.add_argument("--gpu", action="store_true", help="use configs/cifar10_gpu.yaml")
    ap.add_argument("--progressive", type=float, default=None,
                    help="--augment.progressive: the fraction of the run over which the input grows")
    ap.add_argument("--scale", type=float, default=None,
                    help="--augment.progressive_scale: the starting side")
    ap.add_argument("--archive", type=Path, default=ROOT.parent / "shared/datasets/cifar10-jpg.tar.gz")
    ap.add_argument("--dest", type=Path, default=Path("/tmp/vitkit-cifar10"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    recipe = ROOT / "configs" / ("cifar10_gpu.yaml" if args.gpu else "cifar10.yaml")
    cfg = TrainConfig.from_dict(yaml.safe_load(recipe.read_text()))
    data = extract(args.archive, args.dest)
    cfg.data.path, cfg.data.val_path = str(data / "train"), str(data / "test")
    if args.minutes is not None:
        cfg.run.time_budget = args.minutes
    if args.pure:
        cfg.model.stem = "patch"
    if args.progressive is not None:
        cfg.augment.progressive = args.progressive
    if args.scale is not None:
        cfg.augment.progressive_scale = args.scale
    name = ("gpu-" if args.gpu else "") + ("pure" if args.pure else "hybrid") + (
        f", progressive {cfg.augment.progressive:g} from {cfg.augment.progressive_scale:g}"
        if cfg.augment.progressive else "")
    cfg.run.out = str(args.out or Path("/tmp") / f"vitkit-bench-{name.split(',')[0]}-{int(time.time())}")
    cfg.run.progress = False
    t0 = time.perf_counter()
    r = fit(cfg)
    wall = time.perf_counter() - t0
    rows = r.metrics
    speed = sum(m["images_per_s"] for m in rows) / max(len(rows), 1)
    # the same model answering each test image with the mean logits of it and its mirror image
    flipped = evaluate_path(cfg.run.out, log=None, flip=True).result.top1
    print()
    print("| model | device | budget (min) | epochs | train min | wall min | train img/s | test acc "
          "| with flip TTA |")
    print("|---|---|---|---|---|---|---|---|---|")
    device = "cuda" if args.gpu else "cpu"
    print(f"| {name} ({cfg.model.hidden_size}x{cfg.model.num_layers}, patch {cfg.model.patch_size}) "
          f"| {device} | {cfg.run.time_budget} | {r.epoch} | {rows[-1]['elapsed_s'] / 60:.1f} "
          f"| {wall / 60:.1f} "
          f"| {speed:.0f} | {r.val_acc:.2%} | {flipped:.2%} |")


if __name__ == "__main__":
    main()
