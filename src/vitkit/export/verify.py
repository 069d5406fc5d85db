"""Checking a written file against the eager fp32 model it came from, on the same inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..model import ViT
from ..representation import FeatureOptions


@dataclass
class Check:
    """How a file's logits compare with eager fp32 on `images` inputs."""

    images: int
    max_abs_diff: float
    top1_agreement: float

    def __str__(self) -> str:
        return (f"{self.images} inputs: max abs logit difference {self.max_abs_diff:.2e}, "
                f"top-1 agreement {self.top1_agreement:.1%}")


def run_file(path: str | Path, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits of an exported .onnx (onnxruntime) or .pt2 (torch.export) file for inputs x."""
    path = Path(path)
    if path.suffix.lower() == ".pt2":
        from .pt2 import load_pt2

        module = load_pt2(path)[0].module()
        run = module
    else:
        from ..formats.exported import open_onnx

        run = open_onnx(path).model
    with torch.no_grad():
        return torch.cat([run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).float()


def check_file(path: str | Path, model: ViT, x: torch.Tensor) -> Check:
    """Compare the file with the eager model (an fp32 eval-mode copy; autocast off)."""
    from .prepare import export_ready

    model = export_ready(model)[0]
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        ref = torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)]).float()
    got = run_file(path, x)
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    return Check(len(x), (got - ref).abs().max().item(), agree)


@dataclass
class FeatureCheck:
    """How a features export's two outputs compare with eager fp32 on `images` inputs."""

    images: int
    features_max_abs_diff: float
    tokens_max_abs_diff: float

    def __str__(self) -> str:
        return (f"{self.images} inputs: max abs difference {self.features_max_abs_diff:.2e} (features), "
                f"{self.tokens_max_abs_diff:.2e} (tokens)")


def run_features_file(path: str | Path, x: torch.Tensor, batch_size: int = 64
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, tokens) of a features export (.onnx, onnxruntime) for inputs x."""
    from ..formats.exported import open_onnx

    run = open_onnx(path, features=True).model
    with torch.no_grad():
        parts = [run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat([f for f, _ in parts]).float(), torch.cat([t for _, t in parts]).float()


def check_features_file(path: str | Path, model: ViT, options: FeatureOptions, x: torch.Tensor
                        ) -> FeatureCheck:
    """Compare a features export with the eager model read the same way (fp32, autocast off)."""
    from .features import feature_graph
    from .prepare import export_ready

    graph = feature_graph(export_ready(model, head=False)[0], options)[0]
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        parts = [graph(x[i:i + 64]) for i in range(0, len(x), 64)]
    ref_f, ref_t = torch.cat([f for f, _ in parts]), torch.cat([t for _, t in parts])
    got_f, got_t = run_features_file(path, x)
    return FeatureCheck(len(x), (got_f - ref_f).abs().max().item(), (got_t - ref_t).abs().max().item())
