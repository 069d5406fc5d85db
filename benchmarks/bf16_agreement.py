"""How much bf16 inference changes a trained model's predictions.

    python benchmarks/bf16_agreement.py RUN_DIR [RUN_DIR ...]

For each run directory, predicts its validation / test split in fp32 and in bf16 (vitkit's
inference path: bf16 weights for the matrix products under autocast) and prints the top-1
agreement between the two, both accuracies, and the speed of each.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vitkit.data.arrays import iterate_eval  # noqa: E402
from vitkit.data.pipeline import DataConfig  # noqa: E402
from vitkit.data.preprocess import InputSpec  # noqa: E402
from vitkit.inference import for_inference  # noqa: E402
from vitkit.loading import open_model  # noqa: E402
from vitkit.plan import load_data  # noqa: E402
from vitkit.precision import autocast  # noqa: E402


@torch.inference_mode()
def predictions(model, data, spec: InputSpec, precision: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    preds, labels, t0 = [], [], time.perf_counter()
    for x, y in iterate_eval(data, 250):
        with autocast(torch.device("cpu"), precision):
            preds.append(model((x.float() / 255 - mean) / std).float().argmax(1))
        labels.append(y)
    return torch.cat(preds), torch.cat(labels), time.perf_counter() - t0


def main() -> None:
    print("| run | images | fp32 top-1 | bf16 top-1 | top-1 agreement | fp32 img/s | bf16 img/s |")
    print("|---|---|---|---|---|---|---|")
    for run in map(Path, sys.argv[1:]):
        opened = open_model(run)
        model, spec, train = opened.model, opened.spec, opened.extra["train"]
        data = load_data(DataConfig(**{**train["data"], "per_class": None, "val_per_class": None}))
        p32, y, t32 = predictions(model, data.val, spec, "fp32")
        p16, _, t16 = predictions(for_inference(copy.deepcopy(model), "bf16"), data.val, spec, "bf16")
        n = len(y)
        print(f"| {run.name} | {n} | {(p32 == y).float().mean():.2%} | {(p16 == y).float().mean():.2%} "
              f"| {(p32 == p16).float().mean():.2%} | {n / t32:.0f} | {n / t16:.0f} |")


if __name__ == "__main__":
    main()
