"""A 28x28 folder of 8,000 images trained with every default: wall time and held-out accuracy.

    python benchmarks/folder_default.py [--precision auto fp32] [--epochs 0 60]   # 0: the default
    python benchmarks/folder_default.py --path DIR/train --val-path DIR/test --epochs 0 30

The data (digits-upscaled, built once under /tmp/vitkit-folder28): scikit-learn's 1,797
8x8 digits are split by image into 1,400 training and 397 held-out originals; each training
image of the folder is one training original upscaled to 28x28 (bicubic) under a random
rotation (±12°), scale (0.9-1.1) and shift (±2 px), 800 per class (8,000 PNGs in class
subfolders, MNIST's size); the 2,000 test images are made the same way from the held-out
originals only, so no test digit was ever trained on.

Each arm is `vitkit train --data.dataset folder --data.path train --data.val_path test` as
the library's fit, with nothing else set but the arm's training precision and epochs (0: none
set, so the run is planned against the clock by vitkit.training.planner; 30 is the number the
epochs rule alone gives 8,000 images); wall
time is the whole fit (decoding and caching included, the cache cleared first). Arms run one
after another: run this on an otherwise quiet machine.

--path / --val-path run the same arms on any folder of images (CIFAR-10's JPEGs, for instance).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vitkit.data.pipeline import DataConfig  # noqa: E402
from vitkit.precision import cpu_name  # noqa: E402
from vitkit.training import RunConfig, TrainConfig, fit  # noqa: E402

WORK = Path(tempfile.gettempdir()) / "vitkit-folder28"


def jittered(digit: np.ndarray, rng: np.random.Generator, side: int = 28) -> Image.Image:
    """One 8x8 digit (0-16) as a side x side grey image, randomly rotated, scaled and shifted."""
    im = Image.fromarray((digit * (255 / 16)).astype(np.uint8)).resize((20, 20), Image.Resampling.BICUBIC)
    scale = rng.uniform(0.9, 1.1)
    im = im.resize((round(20 * scale),) * 2, Image.Resampling.BICUBIC).rotate(
        rng.uniform(-12, 12), resample=Image.Resampling.BICUBIC)
    canvas = Image.new("L", (side, side))
    dx, dy = rng.integers(-2, 3, size=2)
    canvas.paste(im, ((side - im.width) // 2 + int(dx), (side - im.height) // 2 + int(dy)))
    return canvas


def build(per_class_train: int = 800, per_class_test: int = 200) -> Path:
    """WORK/{train,test}/<digit>/*.png, from disjoint sets of original digits."""
    if (WORK / "done").is_file():
        return WORK
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    splits = {"train": (order[:1400], per_class_train), "test": (order[1400:], per_class_test)}
    rng = np.random.default_rng(1)
    for split, (idx, per_class) in splits.items():
        for label in range(10):
            d = WORK / split / str(label)
            d.mkdir(parents=True, exist_ok=True)
            own = idx[digits.target[idx] == label]
            for i, j in enumerate(rng.choice(own, size=per_class)):
                jittered(digits.images[j], rng).save(d / f"{i:04d}.png")
    (WORK / "done").write_text("")
    return WORK


def run(name: str, train: Path, test: Path, precision: str, epochs: int) -> dict:
    cache = WORK / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # every arm decodes from scratch
    cfg = TrainConfig(
        data=DataConfig(dataset="folder", path=str(train), val_path=str(test), cache_dir=str(cache)),
        run=RunConfig(out=str(WORK / "runs" / name), overwrite=True, progress=False,
                      precision=precision, epochs=epochs or None))
    print(f"\n== {name}", flush=True)
    t0 = time.perf_counter()
    result = fit(cfg)
    wall = time.perf_counter() - t0
    meta = json.loads((WORK / "runs" / name / "config.json").read_text())
    plan = meta.get("plan") or {}
    m = meta["model"]
    return dict(precision=precision, wall=wall, acc=result.val_acc or 0.0, epochs=result.epoch,
                resolved=meta["train"]["run"]["precision"], plan=plan,
                model=f"D {m['hidden_size']}, {m['num_layers']} layers")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", nargs="+", default=["auto", "fp32"])
    ap.add_argument("--epochs", nargs="+", type=int, default=[0])
    ap.add_argument("--path", type=Path, help="a training folder (default: the 28x28 digits folder)")
    ap.add_argument("--val-path", type=Path, help="its held-out folder")
    a = ap.parse_args()
    train, test = (a.path, a.val_path) if a.path else (build() / "train", WORK / "test")
    rows = [run(f"{p}-{e or 'default'}ep", train, test, p, e) for e in a.epochs for p in a.precision]
    cpu = cpu_name()
    what = (f"{train}" if a.path else
            "8,000 training / 2,000 held-out 28x28 digits-upscaled images")
    print(f"\n{what}, every default but precision and epochs ({cpu})\n")
    print("| model | precision | epochs | trained in | planned (step ms) | wall time | held-out accuracy |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        plan = r["plan"]
        steps = ", ".join(f"{k} {v * 1000:.0f}" for k, v in plan.get("step_s", {}).items())
        planned = (f"{plan['expected_s'] + plan['spent_s']:.0f} s of {plan['budget_min'] * 60:.0f} ({steps})"
                   if plan else "-")
        print(f"| {r['model']} | {r['precision']} | {r['epochs']}{'' if plan else ' (set)'} | "
              f"{r['resolved']} | {planned} | {r['wall']:.0f} s | {r['acc']:.2%} |")


if __name__ == "__main__":
    main()
