"""Pre-training without labels, measured: step time of MAE and masked patch prediction against
a supervised step, and (--cifar) what MAE pre-training on CIFAR-10 gives a representation.

    python benchmarks/pretrain.py                      # step times only (a minute)
    python benchmarks/pretrain.py --cifar --minutes 5  # + the CIFAR-10 experiment
    python benchmarks/pretrain.py --cifar --reuse      # again, taking the arms already trained

The CIFAR-10 experiment (shared JPEG archive, extracted under /tmp), one encoder (patch 4 on
32x32, D 192, 6 layers, 3 heads, MLP 384), each arm given the same wall-clock budget:
  1. MAE pre-training on the 50,000 training images (labels unused) for M minutes;
  2. supervised training of the same architecture for M minutes;
  3. frozen-feature read-outs (10-shot ridge, linear probe, k-NN) of MAE, supervised and
     randomly initialized weights;
  4. fine-tuning the MAE encoder for M minutes against training from scratch for 2M minutes
     (the same total time).
Prints markdown tables naming the CPU and whether it computes bf16 natively.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cifar10_budget import extract  # noqa: E402

from vitkit.config import ViTConfig  # noqa: E402
from vitkit.data.augment import AugmentConfig  # noqa: E402
from vitkit.data.pipeline import DataConfig  # noqa: E402
from vitkit.model import ViT  # noqa: E402
from vitkit.precision import autocast, cpu_name, training_precision  # noqa: E402
from vitkit.training import ModelSpec, OptimConfig, RunConfig, TrainConfig, fit  # noqa: E402
from vitkit.training.objectives import Classification, PretrainConfig, SelfSupervised  # noqa: E402
from vitkit.training.schedule import build_optimizer  # noqa: E402

ENCODER = dict(patch_size=4, hidden_size=192, num_layers=6, num_heads=3, mlp_size=384, stem="patch")


class Spec:
    mean = [0.5, 0.5, 0.5]
    std = [0.5, 0.5, 0.5]


def step_times(batch: int, rounds: int, steps: int, precision: str) -> list[tuple[str, float, float]]:
    """Median ms per optimizer step (forward, backward, AdamW) of each objective, interleaved."""
    device = torch.device("cpu")
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    arms = {}
    for name, objective, classes in [("supervised", Classification(), 10),
                                     ("MAE (75% masked)", SelfSupervised(PretrainConfig("mae")), 0),
                                     ("MPP (50% corrupted)", SelfSupervised(PretrainConfig("mpp")), 0)]:
        torch.manual_seed(0)
        model = objective.wrap(ViT(ViTConfig(image_size=32, num_classes=classes, **ENCODER)), Spec).train()
        arms[name] = (model, objective, build_optimizer(model, OptimConfig()))
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(rounds):
        for name, (model, objective, opt) in arms.items():
            for i in range(steps + 1):
                t = time.perf_counter()
                with autocast(device, precision):
                    loss, _ = objective.loss(model, x, y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i:  # the first step of a round warms up
                    times[name].append(time.perf_counter() - t)
    base = statistics.median(times["supervised"])
    return [(k, 1000 * statistics.median(v), base / statistics.median(v)) for k, v in times.items()]


def finished_run(d: Path) -> tuple[Path, float | None] | None:
    """(run dir, last test accuracy) of an arm already trained under d, or None."""
    import csv

    if not (d / "model.safetensors").is_file() or not (d / "metrics.csv").is_file():
        return None
    with open(d / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return (d, float(rows[-1]["val_acc"]) if rows and rows[-1]["val_acc"] else None) if rows else None


def cifar(minutes: float, dest: Path, archive: Path, out: Path, reuse: bool = False) -> None:
    from vitkit.finetune import finetune
    from vitkit.loading import open_model
    from vitkit.pretrain import pretrain
    from vitkit.probe import probe_model

    root = extract(archive, dest)
    data = DataConfig(dataset="folder", path=str(root / "train"), val_path=str(root / "test"))
    augment = AugmentConfig(crop="pad", pad=4, flip=True)
    optim = OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, warmup=0.03)

    def run(name: str, budget: float) -> RunConfig:
        return RunConfig(out=str(out / name), epochs=1000, time_budget=budget, eval_every=1000,
                         batch_size=128, overwrite=True, progress=False)

    def arm(name: str, train, budget: float = minutes) -> tuple[Path, float | None]:
        """Train one arm, or with --reuse take the finished run already under --out."""
        done = finished_run(out / name) if reuse else None
        if done:
            print(f"reusing {done[0]}", flush=True)
            return done
        result = train(run(name, budget))
        return result.run_dir, result.val_acc

    t0 = time.perf_counter()
    mae_optim = replace(optim, lr=1.5e-3, betas=(0.9, 0.95))  # MAE's betas

    def config(r: RunConfig, o: OptimConfig = optim) -> TrainConfig:
        return TrainConfig(data=data, model=ModelSpec(**ENCODER), optim=o, augment=augment, run=r)

    mae_dir, _ = arm("mae", lambda r: pretrain(config(r, mae_optim), PretrainConfig("mae")))
    sup_dir, _ = arm("supervised", lambda r: fit(config(r)))
    torch.manual_seed(0)
    random_dir = out / "random"
    ViT(ViTConfig(image_size=32, num_classes=0, **ENCODER)).save_pretrained(
        random_dir, data={"image_size": [32, 32], "channels": 3, "mean": Spec.mean, "std": Spec.std})
    probes = {}
    for name, path in [("random init", random_dir), (f"MAE, {minutes:g} min", mae_dir),
                       (f"supervised, {minutes:g} min", sup_dir)]:
        r = probe_model(open_model(path), data, shots=(10,), draws=3, linear=True)
        probes[name] = r
    _, ft_acc = arm("mae-finetuned", lambda r: finetune(str(mae_dir), data, optim=optim, augment=augment,
                                                       run=r))
    _, scratch_acc = arm("scratch", lambda r: fit(config(r)), 2 * minutes)
    rows = [(f"MAE {minutes:g} min + fine-tune {minutes:g} min", ft_acc),
            (f"from scratch {2 * minutes:g} min", scratch_acc)]
    print(f"\nCIFAR-10 ({cpu_name()}), "
          f"{(time.perf_counter() - t0) / 60:.0f} min in all\n")
    print("| weights | 10-shot (mean of 3 draws) | linear probe | 20-NN |\n|---|---|---|---|")
    for name, r in probes.items():
        print(f"| {name} | {fmt(r.fewshot[10])} | {fmt(r.linear)} | {fmt(r.knn)} |")
    print("\n| same total time | test accuracy |\n|---|---|")
    for name, acc in rows:
        print(f"| {name} | {acc:.2%} |")


def fmt(v: float | dict) -> str:
    """An accuracy, or a few-shot entry as mean ± spread over draws."""
    if isinstance(v, dict):
        return f"{v['mean']:.2%} ± {v['std']:.2%}"
    return f"{v:.2%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--cifar", action="store_true")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--archive", type=Path, default=ROOT.parent / "shared/datasets/cifar10-jpg.tar.gz")
    ap.add_argument("--dest", type=Path, default=Path("/tmp/vitkit-cifar10"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/vitkit-pretrain-bench"))
    ap.add_argument("--reuse", action="store_true",
                    help="--cifar: take the arms already trained under --out")
    a = ap.parse_args()
    precision = training_precision("auto", torch.device("cpu"))
    print(f"Training step, batch {a.batch}, 32x32, encoder patch 4 / D 192 / 6 layers ({cpu_name()}, "
          f"{precision}); median of "
          f"{a.rounds} interleaved rounds x {a.steps} steps\n")
    print("| objective | ms / step | speed vs supervised |\n|---|---|---|")
    for name, ms, ratio in step_times(a.batch, a.rounds, a.steps, precision):
        print(f"| {name} | {ms:.0f} | {ratio:.2f}x |")
    if a.cifar:
        cifar(a.minutes, a.dest, a.archive, a.out, a.reuse)


if __name__ == "__main__":
    main()
