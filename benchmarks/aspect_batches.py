"""Photos at their own aspect ratio (--data.resize keep): batches of one size each, against
sequences of every size packed into one batch.

    python benchmarks/aspect_batches.py [--rounds 5]

The images are the shared hymenoptera training photos at the sizes `keep` gives them (their
upright sizes read from the files, vitkit.data.preprocess.keep_size at the model's square budget). One
training epoch (forward and backward, batch 64 in the epoch's order) is timed two ways, on the
same model and the same images:

- bucketed: vitkit's way, pipeline.size_batches: each batch holds one size, so each batch is a
  plain dense tensor;
- packed: every batch of 64 images in epoch order (each size's images embedded together), each
  image's tokens padded to the budget's token count and the batch run through the encoder
  blocks as one tensor. No attention mask is applied, so this is a lower
  bound on what packing costs (a mask adds work, never removes it): where bucketing is faster
  than this, it is faster than packing.

For the default photo model (64 px, patch 8, 4 layers, width 64) and DeiT-Tiny's shape at 224
(patch 16, 12 layers, width 192). The two ways alternate each round; medians are printed. The
CPU is named; compare the two columns of one run only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vitkit import ViT, ViTConfig, variant  # noqa: E402
from vitkit.data.arrays import ImageArrays, on_canvas  # noqa: E402
from vitkit.data.folder import scan_folder  # noqa: E402
from vitkit.data.pipeline import epoch_order, size_batches  # noqa: E402
from vitkit.data.preprocess import (  # noqa: E402
    keep_size,  # noqa: E402
    open_image,
    upright_size,
)
from vitkit.precision import cpu_has_amx, cpu_name, native_bf16  # noqa: E402

ARCHIVE = ROOT.parent / "shared" / "datasets" / "hymenoptera.tar.gz"
WORK = Path("/tmp/vitkit-hymenoptera")
BATCH = 64


def photo_sizes() -> list[tuple[int, int]]:
    root = WORK / "hymenoptera"
    if not (root / "train").is_dir():
        WORK.mkdir(parents=True, exist_ok=True)
        with tarfile.open(ARCHIVE) as t:
            t.extractall(WORK, filter="data")
    sizes = []
    for p in scan_folder(root / "train").paths:
        try:
            with open_image(p) as im:
                w, h = upright_size(im)
            sizes.append((h, w))
        except OSError:
            continue
    return sizes


def images_at(sizes: list[tuple[int, int]], cfg: ViTConfig) -> ImageArrays:
    """Random pixels at each photo's keep size (speed does not depend on the pixels)."""
    g = torch.Generator().manual_seed(0)
    shapes = [keep_size(s, cfg.image_hw, cfg.patch_size) for s in sizes]
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in shapes]
    canvas, own = on_canvas(images)
    return ImageArrays(canvas, torch.zeros(len(images), dtype=torch.long), ["a", "b"], own)


def tokens(model: ViT, x: torch.Tensor) -> torch.Tensor:
    return model.embed(x)


def loss_of(model: ViT, z: torch.Tensor) -> torch.Tensor:
    for block in model.blocks:
        z, _ = block(z)
    return model.head(model.norm(z)[:, 0]).logsumexp(-1).mean()


def bucketed_epoch(model: ViT, data: ImageArrays) -> None:
    for size, idx in size_batches(data, epoch_order(len(data), 0, 0), BATCH):
        x = data.batch(idx, size)[0].float() / 255
        loss_of(model, tokens(model, x)).backward()


def packed_epoch(model: ViT, data: ImageArrays) -> None:
    order = epoch_order(len(data), 0, 0)
    budget = model.config.num_patches + model.config.num_prefix_tokens
    for i in range(0, len(order), BATCH):
        batch = data.subset(order[i:i + BATCH])
        rows = []  # each size's images embedded together, then padded to the budget
        for size, idx in batch.groups():
            z = tokens(model, batch.batch(idx, size)[0].float() / 255)
            rows.append(torch.nn.functional.pad(z, (0, 0, 0, budget - z.shape[1])))
        loss_of(model, torch.cat(rows)).backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    sizes = photo_sizes()
    print(f"CPU {cpu_name()}, native bf16: {native_bf16('cpu')}, AMX: {cpu_has_amx()}, "
          f"{torch.get_num_threads()} threads; {len(sizes)} hymenoptera training photos, batch {BATCH}, fp32")
    print("| model | sizes | bucketed s/epoch | packed s/epoch (no mask) | packed / bucketed |")
    print("|---|---:|---:|---:|---:|", flush=True)
    models = {
        "photo default (64 px, patch 8, 4 x 64)": ViTConfig(image_size=64, patch_size=8, hidden_size=64,
                                                             num_layers=4, num_heads=4, mlp_size=128,
                                                             num_classes=2),
        "DeiT-Tiny shape (224 px, Ti/16)": variant("Ti/16", num_classes=2),
    }
    for name, cfg in models.items():
        torch.manual_seed(0)
        model = ViT(cfg).train()
        data = images_at(sizes, cfg)
        runs = {"bucketed": bucketed_epoch, "packed": packed_epoch}
        for fn in runs.values():  # warm-up
            fn(model, data)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(a.rounds):
            for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                t0 = time.perf_counter()
                runs[k](model, data)
                times[k].append(time.perf_counter() - t0)
                model.zero_grad(set_to_none=True)
        b, p = statistics.median(times["bucketed"]), statistics.median(times["packed"])
        print(f"| {name} | {len(data.groups())} | {b:.2f} | {p:.2f} | {p / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
