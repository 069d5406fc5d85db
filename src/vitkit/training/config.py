"""The training recipe as dataclasses: one section per concern, each overridable from the
command line (``--optim.lr 3e-4``) or a YAML recipe under configs/."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Literal

from ..config import ViTConfig, variant
from ..data.augment import AugmentConfig
from ..data.inputs import ModelGeometry
from ..data.pipeline import DataConfig
from ..notices import check_ranges, is_number

# ViTConfig fields that the data decides, not the recipe.
FROM_DATA = ("image_size", "num_channels", "num_classes")
# The model when neither a variant nor sizes are given: the small hybrid of the digits recipe
# (its stem stride and patch are the input plan's: full resolution up to 64 px, strided beyond).
SMALL_MODEL = dict(hidden_size=64, num_layers=4, num_heads=4, mlp_size=128, stem="conv", stem_channels=32)


def _build_config(self, image_size: tuple[int, int], channels: int, num_classes: int,
                  geometry: ModelGeometry) -> ViTConfig:
    """The ViTConfig for data of this size, channel count and class count: the variant (or
    SMALL_MODEL) with every field that is set on top, and the patch, stem and stem stride the
    input plan decided (InputPlan.model, vitkit.plan.model_geometry)."""
    given = {k: v for k, v in dataclasses.asdict(self).items() if k != "variant" and v is not None}
    given.update(patch_size=geometry.patch_size, stem=geometry.stem, stem_stride=geometry.stem_stride)
    data = dict(image_size=image_size, num_channels=channels, num_classes=num_classes)
    if self.variant:
        patch = given.pop("patch_size")
        return variant(f"{self.variant.split('/')[0]}/{patch}", **given, **data)
    return ViTConfig(**{**SMALL_MODEL, **given}, **data)


def _validate_model(self) -> None:
    """Refuse architecture settings out of range (sizes, rates, the variant name) and widths the
    heads do not divide, before any data are read."""
    base = dict(SMALL_MODEL)
    if self.variant:
        try:
            c = variant(self.variant)
        except ValueError as e:
            raise ValueError(f"--model.variant: {e}") from None
        base = dict(hidden_size=c.hidden_size, num_heads=c.num_heads)

    def positive(name: str) -> tuple:
        v = getattr(self, name, None)
        return name, v, v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1), "1 or more"

    def rate(name: str) -> tuple:
        v = getattr(self, name, None)
        return name, v, v is None or (is_number(v) and 0 <= v < 1), "in [0, 1)"

    eps = getattr(self, "layer_norm_eps", None)
    registers = getattr(self, "register_tokens", None)
    check_ranges("model", [
        *(positive(n) for n in ("patch_size", "hidden_size", "num_layers", "num_heads", "mlp_size",
                                "representation_size", "stem_channels", "stem_stride")),
        *(rate(n) for n in ("dropout", "attention_dropout", "drop_path")),
        ("layer_norm_eps", eps, eps is None or (is_number(eps) and eps > 0), "> 0"),
        ("register_tokens", registers, registers is None or registers >= 0, "0 or more"),
    ])
    hidden = self.hidden_size or base.get("hidden_size", 768)
    heads = self.num_heads or base.get("num_heads", 12)
    if hidden % heads:
        raise ValueError(f"--model.hidden_size {hidden} is not divisible by --model.num_heads {heads}")


def _model_spec() -> type:
    """ModelSpec: every ViTConfig field but those the data decides, each optional (unset: from
    the variant, else ViTConfig's default, SMALL_MODEL's sizes and the default patch rule),
    plus the variant name. Derived from ViTConfig, so the two never disagree."""
    hints = typing.get_type_hints(ViTConfig)
    fields = [("variant", str | None, dataclasses.field(default=None))]
    fields += [(f.name, hints[f.name] | None, dataclasses.field(default=None))
               for f in dataclasses.fields(ViTConfig) if f.name not in FROM_DATA]
    cls = dataclasses.make_dataclass("ModelSpec", fields, namespace={
        "__doc__": "Architecture: a variant (e.g. \"Ti/16\") and/or any ViTConfig field except "
                   "image_size, num_channels and num_classes, which come from the data; unset "
                   "fields: the variant's, else the small digits model (SMALL_MODEL).",
        "build_config": _build_config, "validate": _validate_model})
    cls.__module__ = __name__
    return cls


ModelSpec = _model_spec()


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

    def validate(self) -> None:
        """Refuse values the optimizer or schedule cannot use, naming the option."""
        betas = tuple(self.betas)
        check_ranges("optim", [
            ("lr", self.lr, is_number(self.lr) and self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay, is_number(self.weight_decay) and self.weight_decay >= 0,
             ">= 0"),
            ("betas", list(betas), len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas),
             "two numbers in [0, 1)"),
            ("momentum", self.momentum, is_number(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)"),
            ("warmup", self.warmup, is_number(self.warmup) and 0 <= self.warmup <= 1,
             "in [0, 1] (a fraction of training)"),
            ("min_lr_ratio", self.min_lr_ratio, is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
             "in [0, 1]"),
            ("clip_grad", self.clip_grad, self.clip_grad is None or (is_number(self.clip_grad)
                                                                     and self.clip_grad >= 0),
             ">= 0 (0 or null: no clipping)"),
            ("accumulate", self.accumulate, self.accumulate >= 1, "1 or more"),
            ("ema", self.ema, is_number(self.ema) and 0 <= self.ema < 1, "in [0, 1) (0: off)"),
        ])


@dataclass
class RunConfig:
    """How long, where to write, on what hardware."""

    epochs: int | None = None  # None: training.batches.default_epochs (60; fewer for large sets)
    batch_size: int = 128  # global batch, split across processes under torchrun
    eval_batch_size: int = 500
    out: str = "runs/digits"
    overwrite: bool = False  # replace a finished or stopped run in `out` instead of refusing
    seed: int = 0
    deterministic: bool = False
    # auto: bf16 on GPUs that have it, and on CPUs with native bf16 for models large enough to
    # gain (vitkit.precision.training_precision); else fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: Literal["auto"] | bool = "auto"  # torch.compile the model (vitkit.compile decides "auto")
    time_budget: float | None = None  # minutes; the schedule then ends at the deadline
    threads: int | None = None  # torch intra-op threads (default: all cores)
    eval_every: int = 1  # epochs between validation passes (the last epoch is always evaluated)
    progress: bool = True
    log_every: int = 10  # steps between progress updates (also when non-finite loss is checked)
    # recompute encoder blocks in the backward pass: "blocks" keeps only each block's input,
    # "selective" keeps the matrix products' outputs (vitkit.training.memory)
    activation_checkpointing: Literal["none", "blocks", "selective"] = "none"
    # several processes (torchrun): "ddp" replicates the model, "fsdp" shards parameters,
    # gradients and optimizer state per encoder block (torch.distributed.fsdp.fully_shard)
    strategy: Literal["ddp", "fsdp"] = "ddp"

    def validate(self) -> None:
        """Refuse run settings outside their range, naming the option."""
        def at_least(name: str, low: int, optional: bool = False) -> tuple:
            v = getattr(self, name)
            ok = (optional and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= low)
            return name, v, ok, f"{low} or more"

        check_ranges("run", [
            at_least("epochs", 1, optional=True), at_least("batch_size", 1), at_least("eval_batch_size", 1),
            at_least("seed", 0), at_least("threads", 1, optional=True), at_least("eval_every", 1),
            at_least("log_every", 1),
            ("time_budget", self.time_budget, self.time_budget is None
             or (is_number(self.time_budget) and self.time_budget > 0), "> 0 minutes"),
        ])


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        """Check every section, so that a bad value stops the run before data are loaded."""
        for section in (self.data, self.model, self.optim, self.augment, self.run):
            section.validate()

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
