"""The training recipe as dataclasses: one section per concern, each overridable from the
command line (``--optim.lr 3e-4``) or a YAML recipe under configs/."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from ..config import ViTConfig, variant
from ..data.augment import AugmentConfig
from ..data.pipeline import DataConfig


@dataclass
class ModelSpec:
    """Architecture; unset fields come from `variant` (e.g. "Ti/16") or from the data."""

    variant: str | None = None
    patch_size: int | None = None  # default: a 4x4 grid up to 16 px, 8x8 up to 64 px, else 16
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    mlp_size: int = 128
    representation_size: int | None = None
    pos_embed: Literal["learn", "sincos2d", "none"] = "learn"
    pool: Literal["cls", "mean"] = "cls"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    gelu: Literal["exact", "tanh"] = "exact"
    stem: Literal["patch", "conv"] = "conv"  # the paper's hybrid; "patch" for the pure ViT
    stem_channels: int = 32
    stem_stride: int = 1  # a power of 2: the stem downsamples by it (patch_size must divide)

    def build_config(self, image_size: tuple[int, int], channels: int, num_classes: int) -> ViTConfig:
        patch = self.patch_size
        if patch is None:
            side = min(image_size)
            patch = max(1, side // 4) if side <= 16 else max(1, side // 8) if max(image_size) <= 64 else 16
        common = dict(image_size=tuple(image_size), num_channels=channels, num_classes=num_classes,
                      representation_size=self.representation_size, pos_embed=self.pos_embed,
                      pool=self.pool, dropout=self.dropout, attention_dropout=self.attention_dropout,
                      drop_path=self.drop_path, gelu=self.gelu, stem=self.stem,
                      stem_channels=self.stem_channels, stem_stride=self.stem_stride)
        if self.variant:
            name = self.variant if self.patch_size is None else f"{self.variant.split('/')[0]}/{patch}"
            return variant(name, **common)
        return ViTConfig(patch_size=patch, hidden_size=self.hidden_size, num_layers=self.num_layers,
                         num_heads=self.num_heads, mlp_size=self.mlp_size, **common)


@dataclass
class OptimConfig:
    """Optimizer and schedule: the paper's Adam(W) for training from scratch, SGD for fine-tuning."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05  # the paper pre-trains with 0.1 on far larger data
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    warmup: float = 0.05  # fraction of training spent in linear warmup
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    clip_grad: float | None = 1.0  # global gradient-norm clipping
    accumulate: int = 1  # gradient accumulation steps per optimizer step
    ema: float = 0.0  # decay of an exponential moving average of weights (0: off)
    train_only: Literal["all", "head"] = "all"  # "head": linear probe on a frozen backbone


@dataclass
class RunConfig:
    """How long, where to write, on what hardware."""

    epochs: int = 60
    batch_size: int = 128  # global batch, split across processes under torchrun
    eval_batch_size: int = 500
    out: str = "runs/digits"
    overwrite: bool = False  # replace a finished or stopped run in `out` instead of refusing
    seed: int = 0
    deterministic: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPUs that have it, else fp32
    device: Literal["auto", "cpu", "cuda"] = "auto"
    time_budget: float | None = None  # minutes; the schedule then ends at the deadline
    threads: int | None = None  # torch intra-op threads (default: all cores)
    eval_every: int = 1  # epochs between validation passes (the last epoch is always evaluated)
    progress: bool = True
    log_every: int = 10  # steps between progress updates (also when non-finite loss is checked)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        sections = {"data": DataConfig, "model": ModelSpec, "optim": OptimConfig,
                    "augment": AugmentConfig, "run": RunConfig}
        unknown = set(d) - set(sections)
        if unknown:
            raise ValueError(f"unknown training config sections: {', '.join(sorted(unknown))}")
        out = {}
        for name, klass in sections.items():
            values = dict(d.get(name, {}))
            bad = set(values) - {f.name for f in dataclasses.fields(klass)}
            if bad:
                raise ValueError(f"unknown keys in section {name!r}: {', '.join(sorted(bad))}")
            if "betas" in values:
                values["betas"] = tuple(values["betas"])
            out[name] = klass(**values)
        return cls(**out)
