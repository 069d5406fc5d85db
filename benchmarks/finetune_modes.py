"""What fine-tuning costs in each mode: trainable parameters, gradient and optimizer-state
memory, training peak memory and step time, for full fine-tuning (AdamW and the paper's SGD
with momentum) against LoRA adapters (AdamW), on ViTs built at random init (no download).

Each model gets a new 10-class head, as fine-tuning gives it. One training step is forward,
cross-entropy, backward and the optimizer step of vitkit's Trainer (build_optimizer: fused,
decay on matrices only). Optimizer state and gradients are counted tensor by tensor after a
step; the peak is the most tensor memory held during a later step above the level before it
(torch.profiler's allocation records, as benchmarks/memory.py); the step time is the median
of `repeats` steps, the modes interleaved so the machine's load affects them alike.

    python benchmarks/finetune_modes.py                     # S/16 and B/16 at 224, batch 4
    python benchmarks/finetune_modes.py --models B/16 --batch 8 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from vitkit.bench import profiled_events
from vitkit.config import variant
from vitkit.finetune.lora import LoraOptions, LoraViT, trainable_parameters
from vitkit.model import ViT
from vitkit.precision import cpu_name
from vitkit.training import OptimConfig
from vitkit.training.schedule import build_optimizer

MODES = {"full, AdamW": ("full", "adamw"), "full, SGD momentum": ("full", "sgd"),
         "LoRA, AdamW": ("lora", "adamw")}


def build(name: str, mode: str, rank: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = ViT(variant(name, num_classes=10))
    return LoraViT(model, LoraOptions(rank=rank)) if mode == "lora" else model


def tensor_mib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["S/16", "B/16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args()
    print(f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, "
          f"224x224, batch {args.batch}")
    print("| model | mode | trainable / all parameters | gradients MiB | optimizer state MiB | "
          "step peak MiB | step s |")
    print("|---|---|---|---|---|---|---|")
    x = torch.randn(args.batch, 3, 224, 224)
    y = torch.randint(0, 10, (args.batch,))
    for name in args.models:
        steps, rows = {}, {}
        for label, (mode, opt_name) in MODES.items():
            model = build(name, mode, args.rank).train()
            opt = build_optimizer(model, OptimConfig(name=opt_name, lr=1e-4, weight_decay=0.0))

            def step(model=model, opt=opt):
                F.cross_entropy(model(x), y).backward()
                grads = tensor_mib(p.grad for p in model.parameters() if p.grad is not None)
                opt.step()
                opt.zero_grad(set_to_none=True)
                return grads

            grads = step()  # the optimizer state exists from here on
            state = tensor_mib(t for s in opt.state.values() for t in s.values()
                               if torch.is_tensor(t) and t.numel() > 1)
            events = profiled_events(step)
            mem = [e["args"] for e in events
                   if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
            base = mem[0]["Total Allocated"] - mem[0]["Bytes"]
            peak = (max(m["Total Allocated"] for m in mem) - base) / 2**20
            trained, total = trainable_parameters(model)
            steps[label] = step
            rows[label] = [trained, total, grads, state, peak, []]
        for r in range(args.repeats):
            labels = list(MODES)
            for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                t0 = time.perf_counter()
                steps[label]()
                rows[label][5].append(time.perf_counter() - t0)
        for label, (trained, total, grads, state, peak, times) in rows.items():
            print(f"| {name} | {label} | {trained:,} / {total:,} ({trained / total:.2%}) | {grads:.0f} | "
                  f"{state:.0f} | {peak:.0f} | {statistics.median(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
