"""Photos as users have them: default training on a small folder of large JPEGs, before and after.

    python benchmarks/photos.py [--part all|compare|sweep|steps] [--epochs 60] [--sweep_epochs 10]
                                [--before_minutes 2.0] [--rounds 5]

The data imitate a user's photo set: 3 CIFAR-10 classes (airplane, frog, truck), 150 training
and 50 test images per class (450 / 150), each upscaled to 256x256 (bicubic) and saved as JPEG
(quality 90), built once under /tmp/vitkit-photos from the shared archive.

compare: `vitkit train --data.dataset folder --data.path train --data.val_path test` as the
library's fit, three ways, interleaved (so the machine's load falls on them alike):
- before: the old defaults spelled out (224x224, streamed and decoded every epoch, no
  augmentation, the small hybrid's conv stem at stride 1), stopped after --before_minutes
  (its 60 epochs would take about 40 minutes); its full-run wall time is extrapolated;
- by hand: what a careful user set by hand (64x64, decoded once, random resized crop + flip);
- default: nothing but the folders.
sweep: the choices behind the default (size, stem, stride, depth), each trained for
--sweep_epochs epochs with the photo augmentation, decoded once (test accuracy at a fixed
amount of training does not depend on the machine's load).
steps: the training step time of each sweep model (batch 128, forward, backward and AdamW
on random inputs), the models interleaved over --rounds rounds, median: a speed ratio that
holds on a loaded machine.

Images/s is the trainer's figure (images trained on over each epoch's wall time, mean over the
epochs); wall time is the whole fit, data decoding and caching included (the cache is cleared
first). The CPU is shared with other work: compare ratios of one run only.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cifar10_budget import extract  # noqa: E402
from PIL import Image  # noqa: E402

from vitkit.data.augment import AugmentConfig  # noqa: E402
from vitkit.data.pipeline import DataConfig  # noqa: E402
from vitkit.notices import plain_warnings  # noqa: E402
from vitkit.precision import cpu_name  # noqa: E402
from vitkit.training import RunConfig, TrainConfig, fit  # noqa: E402
from vitkit.training.config import ModelSpec  # noqa: E402

ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
WORK = Path(tempfile.gettempdir()) / "vitkit-photos"
CLASSES = ("airplane", "frog", "truck")
PHOTO_AUG = dict(crop="resized", flip=True)


def build_photos(side: int = 256, train: int = 150, test: int = 50) -> Path:
    """WORK/photos/{train,test}/<class>/*.jpg: CIFAR-10 images upscaled to side x side."""
    out = WORK / f"photos{side}"
    if (out / "done").is_file():
        return out
    cifar = extract(ARCHIVE, WORK)
    for split, n in (("train", train), ("test", test)):
        for cls in CLASSES:
            d = out / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for f in sorted((cifar / split / cls).iterdir())[:n]:
                with Image.open(f) as im:
                    im.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(
                        d / f.name, quality=90)
    (out / "done").write_text("")
    return out


def run(name: str, photos: Path, data: dict, model: dict, augment: dict, minutes: float | None,
        epochs: int = 60) -> dict:
    cache = WORK / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # every run decodes from scratch
    cfg = TrainConfig(
        data=DataConfig(dataset="folder", path=str(photos / "train"), val_path=str(photos / "test"),
                        cache_dir=str(cache), **data),
        model=ModelSpec(**model), augment=AugmentConfig(**augment),
        run=RunConfig(out=str(WORK / "runs" / name), overwrite=True, progress=False, time_budget=minutes,
                      epochs=epochs))
    print(f"\n== {name}", flush=True)
    t0 = time.perf_counter()
    result = fit(cfg)
    wall = time.perf_counter() - t0
    rates = [m["images_per_s"] for m in result.metrics if m.get("images_per_s")]
    return dict(name=name, wall=wall, epochs=result.epoch, rate=statistics.mean(rates) if rates else 0.0,
                acc=result.val_acc or 0.0, status=result.status)


BEFORE = dict(data=dict(image_size=224, cache="never"), model=dict(stem="conv", stem_stride=1),
              augment=dict(crop="none", flip=False))
BY_HAND = dict(data=dict(image_size=64, cache="always"), model={}, augment=PHOTO_AUG)
DEFAULT = dict(data={}, model={}, augment={})

# (name, image size, model fields): the sweep, each with the photo augmentation, decoded once
SWEEP = [
    ("64 conv/1 p8", 64, dict(patch_size=8, stem="conv", stem_stride=1)),
    ("64 conv/2 p8", 64, dict(patch_size=8, stem="conv", stem_stride=2)),
    ("64 patch p8", 64, dict(patch_size=8, stem="patch")),
    ("96 conv/4 p12", 96, dict(patch_size=12, stem="conv", stem_stride=4)),
    ("96 patch p12", 96, dict(patch_size=12, stem="patch")),
    ("128 conv/4 p16", 128, dict(patch_size=16, stem="conv", stem_stride=4)),
    ("96 conv/4 p12 6L", 96, dict(patch_size=12, stem="conv", stem_stride=4, num_layers=6)),
]


def step_times(rounds: int, batch: int = 128) -> list[dict]:
    """Median ms per training step of each sweep model, interleaved round by round."""
    import torch

    from vitkit.model import ViT

    models = {}
    for name, size, fields in SWEEP:
        m = ViT(ModelSpec(**fields).build_config((size, size), 3, 3))
        models[name] = (m, torch.optim.AdamW(m.parameters()), torch.randn(batch, 3, size, size),
                        torch.randint(0, 3, (batch,)))
    times: dict[str, list[float]] = {n: [] for n in models}
    for r in range(rounds + 1):
        for name, (m, opt, x, y) in models.items():
            t0 = time.perf_counter()
            for _ in range(2):
                loss = torch.nn.functional.cross_entropy(m(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if r:  # the first round warms up
                times[name].append((time.perf_counter() - t0) / 2 * 1000)
    base = statistics.median(times[SWEEP[0][0]])
    return [dict(name=n, params=sum(p.numel() for p in models[n][0].parameters()),
                 ms=statistics.median(t), speedup=base / statistics.median(t)) for n, t in times.items()]


def table(rows: list[dict], title: str) -> None:
    print(f"\n{title}\n| run | epochs | wall (s) | train img/s | test acc |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['epochs']} | {r['wall']:.0f} | {r['rate']:.0f} | {r['acc']:.1%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "compare", "sweep", "steps"], default="all")
    ap.add_argument("--epochs", type=int, default=60, help="epochs of the by-hand and default runs")
    ap.add_argument("--sweep_epochs", type=int, default=10, help="epochs of each sweep run")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the step timing")
    ap.add_argument("--before_minutes", type=float, default=2.0, help="budget of the old-defaults run")
    args = ap.parse_args()
    photos = build_photos()
    print(f"CPU: {cpu_name()}")
    plain_warnings()
    if args.part in ("all", "compare"):
        rows = [run("before (old defaults)", photos, **BEFORE, minutes=args.before_minutes),
                run("by hand (64, cache, crop + flip)", photos, **BY_HAND, minutes=None, epochs=args.epochs),
                run("default", photos, **DEFAULT, minutes=None, epochs=args.epochs)]
        table(rows, "Defaults on 450 photos (256x256 JPEG), 3 classes, 150 test images")
        before, after = rows[0], rows[2]
        full = 60 * 450 / max(before["rate"], 1e-9)
        print(f"\nbefore: 60 epochs would take ~{full / 60:.0f} min of training at {before['rate']:.0f} "
              f"img/s; default: {after['wall'] / 60:.1f} min for {args.epochs} epochs in all, "
              f"{after['rate'] / max(before['rate'], 1e-9):.1f}x the images/s")
    if args.part in ("all", "sweep"):
        rows = [run(f"sweep {name}", photos, data=dict(image_size=size, cache="always"), model=model,
                    augment=PHOTO_AUG, minutes=None, epochs=args.sweep_epochs) for name, size, model in SWEEP]
        table(rows, f"Sweep: {args.sweep_epochs} epochs each, random resized crop + flip, decoded once")
    if args.part in ("all", "steps"):
        print(f"\nStep time, batch 128, median of {args.rounds} interleaved rounds\n"
              f"| model | params | ms/step | speed vs {SWEEP[0][0]} |\n|---|---:|---:|---:|")
        for r in step_times(args.rounds):
            print(f"| {r['name']} | {r['params']:,} | {r['ms']:.0f} | {r['speedup']:.1f}x |")


if __name__ == "__main__":
    main()
