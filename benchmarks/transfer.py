"""Transfer on a CPU: pre-train on 5 CIFAR-10 classes, fine-tune on the other 5 with 100
labelled images per class in each fine-tuning mode, against training from scratch on the
same 500 images.

    python benchmarks/transfer.py [--pretrain_minutes 5] [--minutes 2] [--archive PATH]

Pre-training: supervised, the CIFAR-10 recipe's hybrid (configs/cifar10.yaml) on the 25,000
training images of airplane, automobile, bird, cat and deer, for --pretrain_minutes.
Fine-tuning on dog, frog, horse, ship and truck: 100 training images per class, tested on
those classes' 5,000 test images; each of full, linear and lora (and from scratch) gets
--minutes of training (linear: features once, then its head). Reported: test accuracy, wall
time and the process's peak resident memory growth during the arm (ru_maxrss, which only
rises: arms run in order of expected memory, smallest first). Prints a markdown table naming
the CPU and whether it computes bf16 natively.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cifar10_budget import extract  # noqa: E402

from vitkit.data.pipeline import DataConfig  # noqa: E402
from vitkit.finetune import finetune  # noqa: E402
from vitkit.precision import cpu_name, native_bf16  # noqa: E402
from vitkit.training import OptimConfig, RunConfig, TrainConfig, fit  # noqa: E402

SOURCE = ["airplane", "automobile", "bird", "cat", "deer"]
TARGET = ["dog", "frog", "horse", "ship", "truck"]


def subset(root: Path, dest: Path, classes: list[str], per_class: int | None) -> Path:
    """A folder of the chosen classes (symlinked files), at most per_class images each."""
    if dest.is_dir():
        return dest
    for split in ("train", "test"):
        for c in classes:
            out = dest / split / c
            out.mkdir(parents=True)
            files = sorted((root / split / c).iterdir())
            for f in files[:per_class] if split == "train" and per_class else files:
                (out / f.name).symlink_to(f)
    return dest


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain_minutes", type=float, default=5.0)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--archive", type=Path, default=ROOT.parent / "shared/datasets/cifar10-jpg.tar.gz")
    ap.add_argument("--dest", type=Path, default=Path("/tmp/vitkit-cifar10"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/vitkit-transfer"))
    a = ap.parse_args()
    root = extract(a.archive, a.dest)
    src = subset(root, a.out / "data-source", SOURCE, None)
    tgt = subset(root, a.out / "data-target", TARGET, 100)
    recipe = TrainConfig.from_dict(yaml.safe_load((ROOT / "configs/cifar10.yaml").read_text()))

    def run(name: str, minutes: float, **kw) -> RunConfig:
        shutil.rmtree(a.out / name, ignore_errors=True)
        return RunConfig(out=str(a.out / name), epochs=1000, time_budget=minutes, eval_every=1000,
                         batch_size=kw.get("batch_size", 128), progress=False, overwrite=True)

    source = DataConfig(dataset="folder", path=str(src / "train"), val_path=str(src / "test"))
    target = DataConfig(dataset="folder", path=str(tgt / "train"), val_path=str(tgt / "test"))
    t = time.perf_counter()
    pre = fit(TrainConfig(data=source, model=recipe.model, optim=recipe.optim, augment=recipe.augment,
                          run=run("pretrained", a.pretrain_minutes)))
    rows = [("pre-training (5 source classes, 25,000 images)", pre.val_acc, time.perf_counter() - t, None)]
    small = run("x", a.minutes, batch_size=50)
    adam = OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, warmup=0.05)
    arms = [
        ("linear (features once, then the head)", dict(mode="linear")),
        ("lora (rank 8, AdamW 1e-3)", dict(mode="lora", optim=adam)),
        ("full (the paper's SGD recipe)", dict(mode="full")),
    ]
    for name, kw in arms:
        before, t = peak_mib(), time.perf_counter()
        r = finetune(str(pre.run_dir), target, augment=recipe.augment,
                     run=run(kw["mode"], a.minutes, batch_size=50), **kw)
        rows.append((name, r.val_acc, time.perf_counter() - t, peak_mib() - before))
    before, t = peak_mib(), time.perf_counter()
    scratch = fit(TrainConfig(data=target, model=recipe.model, optim=recipe.optim, augment=recipe.augment,
                              run=run("scratch", a.minutes, batch_size=small.batch_size)))
    rows.append(("from scratch (same 500 images)", scratch.val_acc, time.perf_counter() - t,
                 peak_mib() - before))
    print(f"\nTransfer to 5 new CIFAR-10 classes from 100 labelled images each ({cpu_name()}, "
          f"{'native' if native_bf16('cpu') else 'no native'} bf16); {a.minutes:g} min of training "
          f"per fine-tuning arm\n")
    print("| run | test accuracy | wall time | peak memory growth |\n|---|---|---|---|")
    for name, acc, secs, mib in rows:
        print(f"| {name} | {acc:.2%} | {secs:.0f} s | {'' if mib is None else f'{mib:.0f} MiB'} |")


if __name__ == "__main__":
    main()
