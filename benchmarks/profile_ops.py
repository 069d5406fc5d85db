"""Where the time goes: torch.profiler's top operators for B/16 inference and the CIFAR training step.

    python benchmarks/profile_ops.py [--precision fp32|bf16] [--rows 12]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vitkit.bench import CIFAR, Workload, build, make_step  # noqa: E402
from vitkit.config import variant  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--lib", default="vitkit", choices=["vitkit", "timm", "hf"])
    args = ap.parse_args()
    for w, steps in ((Workload("B/16", variant("B/16"), 8, "infer", args.precision), 3),
                     (Workload("CIFAR ViT", CIFAR, 128, "train", args.precision), 5)):
        torch.manual_seed(0)
        step = make_step(args.lib, build(args.lib, w.config, "cpu"), w, "cpu")
        for _ in range(2):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        print(f"\n## {args.lib} {w.name} {w.mode}, batch {w.batch}, {args.precision} ({steps} steps)\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
