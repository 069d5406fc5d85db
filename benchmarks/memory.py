"""Training memory and step time with and without activation checkpointing, in one run.

For each model (S/16, B/16, L/16 at 224, fp32, batch sizes below) and each way of running
it (vitkit without checkpointing, with "blocks" and "selective" checkpointing; timm's
VisionTransformer without and with set_grad_checkpointing), one training step (forward,
cross-entropy, backward, fused AdamW step) is measured:

- activations: the tensor memory held at the end of the forward pass above the level before
  the step (what is kept for the backward pass);
- peak: the most tensor memory held at any moment of the step above that level (activations,
  gradients, optimizer temporaries);
- step time: the median of `repeats` timed steps, the ways of running interleaved so that the
  machine's load affects them alike.

Memory comes from the allocation records of torch.profiler (every allocation and free with
the running total, as vitkit.bench's training peak), taken on a step after a warm-up step,
so the optimizer state already exists; on a GPU from CUDA's allocator.

    python benchmarks/memory.py                       # S/16, B/16, L/16 on the CPU
    python benchmarks/memory.py --models S/16 --repeats 3 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vitkit import ViT, variant
from vitkit.bench import profiled_events, sync
from vitkit.training.config import OptimConfig
from vitkit.training.memory import apply_activation_checkpointing
from vitkit.training.schedule import build_optimizer

BATCH = {"S/16": 8, "B/16": 4, "L/16": 2}
WAYS = ["vitkit", "vitkit blocks", "vitkit selective", "timm", "timm grad ckpt"]


def build(way: str, name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = variant(name, num_classes=1000)
    if way.startswith("timm"):
        from timm.models.vision_transformer import VisionTransformer

        from vitkit.formats.timm import timm_kwargs

        m = VisionTransformer(**timm_kwargs(cfg))
        m.set_grad_checkpointing(way == "timm grad ckpt")
    else:
        m = ViT(cfg)
        mode = way.split()[1] if " " in way else "none"
        apply_activation_checkpointing(m, mode)
    return m.to(device).train()


def make_step(model, batch: int, device: str):
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05))

    def step(mark=None):
        with torch.profiler.record_function("forward"):
            loss = F.cross_entropy(model(x).float(), y)
        if mark is not None:
            mark()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def memory(step, device: str) -> tuple[float, float]:
    """(activations MiB, peak MiB) of one step, above the level before it."""
    if device == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        marks = []
        step(lambda: marks.append(torch.cuda.memory_allocated()))
        sync(device)
        return (marks[0] - base) / 2**20, (torch.cuda.max_memory_allocated() - base) / 2**20
    events = profiled_events(step)
    mem = sorted((e for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0),
                 key=lambda e: e["ts"])
    fwd = [e for e in events if e.get("name") == "forward" and e.get("ph") == "X"]
    end = fwd[0]["ts"] + fwd[0]["dur"]
    base = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    at_end = [e["args"]["Total Allocated"] for e in mem if e["ts"] <= end]
    peak = max(e["args"]["Total Allocated"] for e in mem)
    return (at_end[-1] - base) / 2**20, (peak - base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(BATCH))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    rows = []
    for name in a.models:
        steps = {}
        for way in WAYS:
            step = make_step(build(way, name, a.device), BATCH[name], a.device)
            step()  # warm-up: optimizer state, allocator
            sync(a.device)
            act, peak = memory(step, a.device)
            steps[way] = step
            rows.append({"model": name, "batch": BATCH[name], "way": way, "activations_mib": act,
                         "peak_mib": peak})
        times = {w: [] for w in WAYS}
        for _ in range(a.repeats):
            for way in WAYS:
                t = time.perf_counter()
                steps[way]()
                sync(a.device)
                times[way].append(time.perf_counter() - t)
        for r in rows:
            if r["model"] == name:
                r["step_s"] = statistics.median(times[r["way"]])
        steps.clear()
        base = {lib: next(r for r in rows if r["model"] == name and r["way"] == lib)
                for lib in ("vitkit", "timm")}
        for r in rows:
            if r["model"] == name:
                b = base["timm" if r["way"].startswith("timm") else "vitkit"]
                r["activations_ratio"] = r["activations_mib"] / b["activations_mib"]
                r["time_ratio"] = r["step_s"] / b["step_s"]
                print(f"{name:5s} batch {r['batch']}  {r['way']:17s} activations "
                      f"{r['activations_mib']:8.1f} MiB ({r['activations_ratio']:.0%})  "
                      f"peak {r['peak_mib']:8.1f} MiB  step "
                      f"{r['step_s']:.2f} s ({r['time_ratio']:.2f}x)", flush=True)
    print("\n| model | batch | way | activations MiB | vs none | step peak MiB | step s | vs none |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['way']} | {r['activations_mib']:.0f} | "
              f"{r['activations_ratio']:.0%} | {r['peak_mib']:.0f} | {r['step_s']:.2f} | "
              f"{r['time_ratio']:.2f}x |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
