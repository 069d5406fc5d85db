"""Training step time in bf16 autocast against fp32 on this CPU, the numbers behind training
precision "auto" (vitkit.precision.training_precision).

    python benchmarks/train_precision.py [--rounds 3] [--steps 4]

One optimizer step (forward, loss, backward, AdamW) of each model at its recipe's batch, on
random inputs, bf16 and fp32 interleaved round by round; medians. The models: the default
model of a 28x28 grey folder (width 64, conv stem at full resolution), the digits recipe
(width 64 on 8x8), the default photo model (64x64 RGB, patch 8), the CIFAR-10 recipe (configs/cifar10.yaml:
width 192, conv stem) and
S/16 and B/16 at 224. Prints a markdown table naming the CPU and its bf16 support.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vitkit.config import ViTConfig, variant  # noqa: E402
from vitkit.info import forward_macs  # noqa: E402
from vitkit.model import ViT  # noqa: E402
from vitkit.precision import autocast, cpu_has_amx, cpu_name, native_bf16, training_precision  # noqa: E402
from vitkit.training import ModelSpec, OptimConfig  # noqa: E402
from vitkit.training.schedule import build_optimizer  # noqa: E402


def models() -> list[tuple[str, ViTConfig, int]]:
    """(name, config, batch) of each measured recipe."""
    cifar = yaml.safe_load((ROOT / "configs" / "cifar10.yaml").read_text())["model"]
    return [
        ("16x16 grey folder default (D 64)", ModelSpec().build_config((16, 16), 1, 10), 128),
        ("28x28 grey folder default (D 64)", ModelSpec().build_config((28, 28), 1, 10), 128),
        ("digits recipe, 8x8 (D 64)", ModelSpec(patch_size=2).build_config((8, 8), 1, 10), 128),
        ("photo folder default, 64x64 RGB (D 64)",
         ModelSpec(patch_size=8, stem="patch").build_config((64, 64), 3, 3), 128),
        ("CIFAR-10 recipe (D 192)", ViTConfig(image_size=32, num_classes=10, **cifar), 128),
        ("S/16 at 224 (D 384)", variant("S/16", num_classes=100), 32),
        ("B/16 at 224 (D 768)", variant("B/16", num_classes=100), 16),
    ]


def step_ms(config: ViTConfig, batch: int, rounds: int, steps: int) -> dict[str, float]:
    """Median ms per optimizer step for fp32 and bf16, interleaved."""
    device = torch.device("cpu")
    h, w = config.image_hw
    x = torch.randn(batch, config.num_channels, h, w)
    y = torch.randint(0, config.num_classes, (batch,))
    arms = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = ViT(config).train()
        arms[precision] = (model, build_optimizer(model, OptimConfig()))
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(rounds):
        for precision, (model, opt) in arms.items():
            for i in range(steps + 1):
                t = time.perf_counter()
                with autocast(device, precision):
                    loss = F.cross_entropy(model(x).float(), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i:  # the first step of a round warms up
                    times[precision].append(time.perf_counter() - t)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--only", default="", help="time only the models whose name contains this")
    a = ap.parse_args()
    bf16 = "native bf16" if native_bf16("cpu") else "no native bf16"
    amx = ", AMX" if cpu_has_amx() else ", no AMX"
    print(f"Training step, fp32 against bf16 autocast ({cpu_name()}, {bf16}{amx}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads); median of {a.rounds} interleaved "
          f"rounds x {a.steps} steps\n")
    print("| model | forward MMACs / image | batch | fp32 ms/step | bf16 ms/step | bf16 vs fp32 | auto |\n"
          "|---|---|---|---|---|---|---|")
    for name, config, batch in [m for m in models() if a.only in m[0]]:
        ms = step_ms(config, batch, a.rounds, a.steps)
        macs = forward_macs(config)
        auto = training_precision("auto", torch.device("cpu"), macs)
        print(f"| {name} | {macs / 1e6:,.1f} | {batch} | {ms['fp32']:.0f} | {ms['bf16']:.0f} | "
              f"{ms['fp32'] / ms['bf16']:.2f}x | {auto} |", flush=True)


if __name__ == "__main__":
    main()
