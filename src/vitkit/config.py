"""Model configuration: one small dataclass plus the named variants of the paper's Table 1."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

from .sizes import hw

PosEmbed = Literal["learn", "sincos2d", "none"]
Pool = Literal["cls", "mean"]
Gelu = Literal["exact", "tanh"]
Stem = Literal["patch", "conv"]


def patch_problem(size: int | tuple[int, int], patch: int) -> str | None:
    """Why images of this size cannot be cut into patch x patch patches, or None when they can:
    the one patch check, for configs, run-time inputs and exported graphs alike."""
    h, w = hw(size)
    if patch < 1 or h % patch or w % patch:
        return f"image size {h}x{w} is not a multiple of patch size {patch}"
    return None


@dataclass
class ViTConfig:
    """Everything that fixes a ViT's architecture; the names follow the paper."""

    image_size: tuple[int, int] = (224, 224)  # (h, w); one side given is read as a square
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_size: int = 3072
    num_classes: int = 1000
    representation_size: int | None = None  # tanh pre-logits layer of the pre-training head
    pos_embed: PosEmbed = "learn"  # learnable 1D (paper default), fixed 2D sin-cos, or none
    pool: Pool = "cls"  # class token, or global average of the patch tokens
    class_token: bool = True
    # registers (Darcet et al., ICLR 2024): learnable tokens after the class token that the head
    # ignores; they give attention a place to park global information instead of patch tokens
    register_tokens: int = 0
    # DeiT's distillation token (Touvron et al., ICML 2021): a second token after the class token
    # with its own head (head_dist), trained toward a teacher's labels; the logits are the
    # average of the two heads, so the model answers as one
    distill_token: bool = False
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0  # stochastic depth at the last block; linear from 0 over depth
    layer_norm_eps: float = 1e-6
    gelu: Gelu = "exact"  # "tanh" is the approximation used by the official JAX code
    qkv_bias: bool = True
    stem: Stem = "patch"  # "conv": the paper's hybrid input, a small conv stem before the patches
    stem_channels: int = 64
    stem_stride: int = 1  # a power of 2: the stem downsamples by it; patches then span
    # patch_size // stem_stride feature-map cells, so patch_size stays pixels per token side

    def __post_init__(self) -> None:
        self.image_size = hw(self.image_size)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.register_tokens < 0:
            raise ValueError(f"register_tokens must be 0 or more, got {self.register_tokens}")
        if self.pool == "cls" and not self.class_token:
            raise ValueError("pool='cls' needs class_token=True")
        if self.distill_token and (self.pool != "cls" or not self.class_token):
            raise ValueError("distill_token=True needs the class token and pool='cls' (the two heads "
                             "read the class and distillation tokens)")
        if self.pos_embed == "sincos2d" and self.hidden_size % 4:
            raise ValueError(
                f"2D sin-cos position embeddings need hidden_size % 4 == 0, got {self.hidden_size}"
            )
        if self.stem == "conv" and (self.stem_stride < 1 or self.stem_stride & (self.stem_stride - 1)):
            raise ValueError(f"stem stride must be a power of 2, got {self.stem_stride}")
        if self.stem == "conv" and self.patch_size % self.stem_stride:
            raise ValueError(
                f"patch size {self.patch_size} is not a multiple of stem stride {self.stem_stride}"
            )
        problem = patch_problem(self.image_size, self.patch_size)
        if problem:
            raise ValueError(problem)

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.image_size

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = self.image_hw
        return h // self.patch_size, w // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token (if any), the distillation token (if
        any), then the registers."""
        return (1 if self.class_token else 0) + int(self.distill_token) + self.register_tokens

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def replace(self, **changes) -> ViTConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = list(d["image_size"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig keys: {', '.join(unknown)}")
        return cls(**d)


# Paper Table 1 (B, L, H) plus the widely used Ti and S (DeiT): (hidden, layers, mlp, heads).
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}
PATCH_SIZES = (8, 14, 16, 32)
# Parameter counts printed in the paper's Table 1 (millions, rounded there).
PAPER_PARAMS_M = {"B": 86, "L": 307, "H": 632}

_NAME = re.compile(r"^(Ti|S|B|L|H)/(\d+)$")


def variant(name: str, **overrides) -> ViTConfig:
    """Config for a named variant such as "B/16" or "Ti/16"; keyword overrides win.

    >>> variant("B/16").hidden_size
    768
    """
    m = _NAME.match(name.strip())
    if not m:
        raise ValueError(
            f"unknown variant {name!r}: expected <size>/<patch> with size in "
            f"{', '.join(VARIANTS)} (for example 'B/16')"
        )
    size, patch = m.group(1), int(m.group(2))
    hidden, layers, mlp, heads = VARIANTS[size]
    base = dict(
        patch_size=patch, hidden_size=hidden, num_layers=layers, mlp_size=mlp, num_heads=heads
    )
    base.update(overrides)
    return ViTConfig(**base)


def variant_names() -> list[str]:
    return [f"{s}/{p}" for s in VARIANTS for p in PATCH_SIZES]


def variant_name(config: ViTConfig) -> str | None:
    """'B/16' and the like when the config is a named variant's architecture."""
    shape = (config.hidden_size, config.num_layers, config.mlp_size, config.num_heads)
    name = next((n for n, v in VARIANTS.items() if v == shape), None)
    return f"{name}/{config.patch_size}" if name else None


def conv_stem_plan(channels: int, stride: int) -> list[tuple[int, int]]:
    """(out channels, stride) of each conv of the hybrid stem: with stride 1 two of `channels`
    width; with stride 2^k one at full resolution and k that each halve the map and double
    the width, ending at `channels`."""
    k = stride.bit_length() - 1
    if k == 0:
        return [(channels, 1), (channels, 1)]
    return [(max(channels >> k, 1), 1)] + [(max(channels >> (k - i), 1), 2) for i in range(1, k + 1)]
