"""What capturing attention costs: a plain forward pass (fused scaled_dot_product_attention)
against one that returns every layer's attention matrices (explicit softmax(QK^T)).

Runs are interleaved (plain, capture, plain, capture, ...) so drifting machine load hits
both alike, and the median is reported. Prints a markdown table.

    python benchmarks/attention_capture.py [--models Ti/16 S/16] [--batch 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vitkit import ViT


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_model(name: str, image_size: int, batch: int, repeats: int, warmup: int,
               device: torch.device) -> tuple[float, float]:
    """Median milliseconds of a plain forward pass and of one that captures attention."""
    model = ViT.from_name(name, image_size=image_size).to(device).eval()
    x = torch.randn(batch, 3, image_size, image_size, device=device)

    def plain() -> None:
        model(x)

    def capture() -> None:
        feats, maps = model.forward_features(x, return_attention=True)
        model.forward_head(feats)

    runs: dict[str, list[float]] = {"plain": [], "capture": []}
    for i in range(warmup + repeats):
        order = [("plain", plain), ("capture", capture)]
        for key, fn in order if i % 2 == 0 else order[::-1]:
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                runs[key].append(1000 * (time.perf_counter() - t0))
    return statistics.median(runs["plain"]), statistics.median(runs["capture"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["Ti/16", "S/16"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}, torch {torch.__version__}, fp32, eval, {args.repeats} interleaved repeats "
          f"after {args.warmup} warm-up, median\n")
    print("| model | batch | plain forward ms | capture ms | ratio |")
    print("|---|---|---|---|---|")
    for name in args.models:
        plain, capture = time_model(name, args.image_size, args.batch, args.repeats, args.warmup, device)
        print(f"| {name} @{args.image_size} | {args.batch} | {plain:.1f} | {capture:.1f} | "
              f"{capture / plain:.2f} |", flush=True)


if __name__ == "__main__":
    main()
