"""Training speed of the CIFAR-10 recipe from tar shards against the uint8 cache and the folder.

    python benchmarks/shards_speed.py [--per_class 1000] [--rounds 3] [--epochs 1] [--workers 2]

The same recipe (configs/cifar10.yaml, the same seed) trains for whole epochs from three
sources of the same training JPEGs (the first `per_class` of each class, 0 for all 50,000;
the test images likewise, a fifth as many), the sources interleaved round by round so that the
machine's load falls on them alike:

- cache: the folder decoded once into vitkit's uint8 tensor cache (built before timing);
- folder: the JPEG files decoded in DataLoader workers every epoch (`--data.cache never`);
- shards: `vitkit shards` tar files (the JPEG bytes unchanged) streamed through DataLoader workers.

Images/s is the trainer's own figure for an epoch: images trained on over the epoch's wall
time, DataLoader start-up included, validation not. Every source gets the same batch
augmentation (pad-and-crop and flip on whole uint8 batches), so the sources differ only in
how the images arrive. Precision is the trainer's: the recipe's bf16, or fp32 on a CPU that
would emulate bf16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cifar10_budget import extract  # noqa: E402

from vitkit.data.folder import load_folder_cached, scan_folder  # noqa: E402
from vitkit.data.shards import write_shards  # noqa: E402
from vitkit.notices import plain_warnings  # noqa: E402
from vitkit.precision import cpu_name  # noqa: E402
from vitkit.training import TrainConfig, fit  # noqa: E402

SOURCES = ["cache", "folder", "shards"]


def subset(full: Path, dst: Path, per_class: int) -> Path:
    """dst/train and dst/test linking the first per_class training images of each class and a
    fifth as many test images; `full` itself when per_class is 0."""
    if not per_class:
        return full
    for split, n in (("train", per_class), ("test", per_class // 5)):
        for cls in sorted(p for p in (full / split).iterdir() if p.is_dir()):
            (dst / split / cls.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.iterdir())[:n]:
                (dst / split / cls.name / f.name).symlink_to(f.resolve())
    return dst


def recipe(source: str, data: Path, shards: Path, out: Path, epochs: int, workers: int) -> TrainConfig:
    cfg = TrainConfig.from_dict(yaml.safe_load((ROOT / "configs" / "cifar10.yaml").read_text()))
    if source == "shards":
        cfg.data.dataset = "shards"
        cfg.data.path, cfg.data.val_path = str(shards / "train"), str(shards / "test")
    else:
        cfg.data.path, cfg.data.val_path = str(data / "train"), str(data / "test")
        cfg.data.cache = "always" if source == "cache" else "never"
    # the same normalization for all (streamed sources do not measure it)
    cfg.data.mean, cfg.data.std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    cfg.data.workers = workers
    cfg.run.epochs, cfg.run.time_budget, cfg.run.eval_every = epochs, None, epochs
    cfg.run.out, cfg.run.progress = str(out), False
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per_class", type=int, default=1000, help="training images per class (0: all)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per source, interleaved")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per run")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (folder, shards)")
    ap.add_argument("--archive", type=Path, default=ROOT.parent / "shared/datasets/cifar10-jpg.tar.gz")
    ap.add_argument("--dest", type=Path, default=Path("/tmp/vitkit-cifar10"))
    ap.add_argument("--sources", nargs="+", default=SOURCES, choices=SOURCES)
    args = ap.parse_args()
    plain_warnings()

    work = Path(tempfile.mkdtemp(prefix="vitkit-shards-bench-"))
    data = subset(extract(args.archive, args.dest), work / "images", args.per_class)
    shards = work / "shards"
    t0 = time.perf_counter()
    for split in ("train", "test"):
        write_shards(scan_folder(data / split), shards / split, shard_size=1000)
    t_shards = time.perf_counter() - t0
    t0 = time.perf_counter()
    for split in ("train", "test"):  # built once, as a user's first run would
        load_folder_cached(scan_folder(data / split), 3, (32, 32), None, args.workers)
    t_cache = time.perf_counter() - t0
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    print(f"writing shards: {t_shards:.1f} s; building (or finding) the uint8 cache: {t_cache:.1f} s")

    speeds: dict[str, list[float]] = {s: [] for s in args.sources}
    accs: dict[str, list[float]] = {s: [] for s in args.sources}
    precision, counts = None, None
    for r in range(args.rounds):
        order = args.sources if r % 2 == 0 else args.sources[::-1]
        for source in order:
            cfg = recipe(source, data, shards, work / f"run-{source}-{r}", args.epochs, args.workers)
            ts = []
            result = fit(cfg, on_step=lambda t, ts=ts: ts.append(t) if not ts else None)
            precision = ts[0].precision
            counts = (len(ts[0].data.train), len(ts[0].data.val))
            speed = statistics.mean(m["images_per_s"] for m in result.metrics)
            speeds[source].append(speed)
            accs[source].append(result.val_acc or 0.0)
            print(f"round {r + 1} {source}: {speed:.0f} img/s, test acc {result.val_acc:.2%}", flush=True)

    base = statistics.median(speeds["cache"]) if "cache" in speeds else None
    print()
    print(f"CIFAR-10 recipe (configs/cifar10.yaml, training in {precision}, batch 128), {counts[0]} "
          f"training and {counts[1]} test images, {args.epochs} epoch(s) per run, {args.rounds} runs per "
          f"source, {args.workers} DataLoader workers; CPU: {cpu_name()}")
    print()
    print("| source | train img/s (median) | runs | vs cache | test acc after the run(s) |")
    print("|---|---|---|---|---|")
    for s in args.sources:
        med = statistics.median(speeds[s])
        ratio = f"{med / base:.2f}x" if base else "-"
        runs = ", ".join(f"{v:.0f}" for v in speeds[s])
        print(f"| {s} | {med:.0f} | {runs} | {ratio} | {statistics.mean(accs[s]):.2%} |")


if __name__ == "__main__":
    main()
