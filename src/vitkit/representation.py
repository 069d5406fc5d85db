"""Which representation of a model its features are: the block, the token and the final norm.

The one definition that `vitkit embed` and `vitkit probe` (vitkit.features) and the features
export (vitkit.export.features) read, so a file and the library give the same numbers. It
needs only the model, so everything that reads features stands above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class FeatureOptions:
    """Which representation to read from the model.

    Attributes:
        layer: the encoder block whose output is read (0-based; -1 is the last).
        token: cls (the class token) or mean (mean of the patch tokens); default: the model's pooling.
        norm: apply the final LayerNorm (for the last block: the paper's representation y, Eq. 4).
        batch_size: images per forward pass.
        precision: auto (bf16 where the hardware has native bf16), fp32 or bf16.
    """

    layer: int = -1
    token: Literal["cls", "mean"] | None = None
    norm: bool = True
    batch_size: int = 256
    precision: Literal["auto", "fp32", "bf16"] = "auto"


def resolve_options(model: torch.nn.Module, options: FeatureOptions, source: str) -> tuple[int, str]:
    """The block index (0-based) and the token that `options` name for `model`, checked once
    for embed, probe and a features export alike; one-line errors naming the option."""
    depth = len(model.blocks)
    if not -depth <= options.layer < depth:
        raise ValueError(f"layer {options.layer} (--features.layer): the model has {depth} blocks "
                         f"(0..{depth - 1}, or negative from the end)")
    token = options.token or model.config.pool
    if token not in ("cls", "mean"):
        raise ValueError(f"token {token!r} (--features.token): expected cls or mean")
    if token == "cls" and not model.config.class_token:  # registers alone are no class token
        raise ValueError(f"token cls (--features.token): {source} has no class token; use mean")
    return options.layer % depth, token


def read_features(model: torch.nn.Module, x: torch.Tensor, layer: int, token: str, norm: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (B, D), patch tokens (B, N, D)) of block `layer` for normalized images x: the
    one definition FeatureModel and the features export both compute."""
    out = model.forward_intermediates(x, layers=[layer], norm=norm)
    patches = out.patches[0]
    return (out.prefix[0][:, 0] if token == "cls" else patches.mean(dim=1)), patches
