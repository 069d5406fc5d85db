"""The feature extractor as an exportable graph: the representation `vitkit embed` reads,
for tools that run ONNX and not vitkit.

The graph takes the same normalized float batch as the classifier export and returns
`features` (B, D), what vitkit.features.FeatureModel computes for the same options, and
`tokens` (B, D, h, w), the patch tokens of the same block as a grid for dense heads. It
holds no classifier head, so a model without one (a pre-trained encoder) exports too.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import ViT
from ..representation import FeatureOptions, read_features, resolve_options

FEATURES_NAME, TOKENS_NAME = "features", "tokens"
OUTPUT_NAMES = (FEATURES_NAME, TOKENS_NAME)


class FeatureGraph(nn.Module):
    """A ViT read at one block: forward gives (features (B, D), tokens (B, D, h, w))."""

    def __init__(self, vit: ViT, layer: int, token: str, norm: bool):
        super().__init__()
        self.vit, self.layer, self.token, self.norm = vit, layer, token, norm

    @property
    def config(self):
        """The ViT's config: the export reads the input shape from it."""
        return self.vit.config

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, patches = read_features(self.vit, x, self.layer, self.token, self.norm)
        p = self.vit.config.patch_size
        gh, gw = x.shape[-2] // p, x.shape[-1] // p  # from the input: a dynamic-size export traces H, W
        grid = patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], gh, gw)
        return features, grid


def feature_graph(model: ViT, options: FeatureOptions, source: str = "the model"
                  ) -> tuple[FeatureGraph, dict]:
    """The graph for `options` on `model` (an export-ready fp32 eval copy) and the options as
    stored in the file's metadata: the block (0-based), the token and the final norm."""
    layer, token = resolve_options(model, options, source)
    stored = {"layer": layer, "token": token, "norm": bool(options.norm)}
    return FeatureGraph(model, layer, token, bool(options.norm)).eval(), stored
