"""LoRA fine-tuning (Hu et al., 2021) through the peft library: every targeted nn.Linear of the
encoder (attention qkv and output projection, MLP fc1 and fc2) gets a trainable low-rank
update W + (alpha / r) B A, with B zero at the start; the pre-trained weights stay frozen and
only the adapters and the new head are trained. Optimizer state shrinks with the trainable
parameters (AdamW keeps two numbers per trained parameter).

The run trains through vitkit's normal Trainer, with LoRA as its objective: the weights it
publishes (model.safetensors, every save) are the adapters merged into plain weights, so
predict, evaluate, export and serve open the result like any vitkit model. state.pt holds
the adapted model itself and config.json the options, so an interrupted run continues
exactly (vitkit train --resume RUN rebuilds the adapters: from_meta, found by name by
vitkit.training.resume).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..model import ViT
from ..notices import check_ranges, is_number
from ..training.objectives import Classification

TARGETS = ("qkv", "proj", "fc1", "fc2")
_PARENT = {"qkv": "attn", "proj": "attn", "fc1": "mlp", "fc2": "mlp"}


@dataclass
class LoraOptions:
    """Low-rank adapters (--lora.KEY).

    Attributes:
        rank: r, the rank of each update B A.
        alpha: scale of the update, applied as alpha / r.
        dropout: dropout on the adapters' input.
        targets: which of each block's linear layers are adapted (qkv, proj, fc1, fc2).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(TARGETS))

    def validate(self) -> None:
        bad = sorted(set(self.targets) - set(TARGETS))
        check_ranges("lora", [
            ("rank", self.rank, isinstance(self.rank, int) and self.rank >= 1, "1 or more"),
            ("alpha", self.alpha, is_number(self.alpha) and self.alpha > 0, "> 0"),
            ("dropout", self.dropout, is_number(self.dropout) and 0 <= self.dropout < 1, "in [0, 1)"),
            ("targets", ",".join(bad or self.targets), bool(self.targets) and not bad,
             f"some of {', '.join(TARGETS)}"),
        ])

    def target_regex(self) -> str:
        """peft's target_modules as a regular expression over vitkit's module names."""
        names = "|".join(f"{_PARENT[t]}\\.{t}" for t in self.targets)
        return rf"blocks\.\d+\.({names})"


class LoraViT(nn.Module):
    """A ViT with LoRA adapters injected by peft; only the adapters and the head train."""

    def __init__(self, model: ViT, opts: LoraOptions):
        super().__init__()
        try:
            from peft import LoraConfig, LoraModel
        except ImportError:
            raise ValueError("--mode lora needs the peft library (pip install 'vitkit[lora]')") from None
        opts.validate()
        cfg = LoraConfig(r=opts.rank, lora_alpha=opts.alpha, lora_dropout=opts.dropout,
                         target_modules=opts.target_regex(), bias="none")
        self.lora = LoraModel(model, cfg, "default")  # injects in place; freezes all but the adapters
        for p in model.head.parameters():
            p.requires_grad_(True)

    @property
    def vit(self) -> ViT:
        return self.lora.model

    @property
    def config(self):
        return self.vit.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the full forward: the class-token fast path reads the last block's qkv weight itself,
        # which would skip that layer's adapter
        vit = self.vit
        return vit.forward_head(vit.forward_features(x))

    def merged(self) -> ViT:
        """A plain ViT with W + (alpha / r) B A in each adapted layer; this model is unchanged."""
        return copy.deepcopy(self.lora).merge_and_unload()


class LoraClassification(Classification):
    """Supervised training of a ViT through LoRA adapters; the published model is merged."""

    def __init__(self, opts: LoraOptions):
        self.opts = opts

    def wrap(self, model: ViT, spec) -> nn.Module:
        wrapped = LoraViT(model, self.opts)
        trained, total = trainable_parameters(wrapped)
        print(f"LoRA rank {self.opts.rank}: {trained:,} of {total:,} parameters trainable "
              f"({trained / total:.2%}: adapters and head)", flush=True)
        return wrapped

    def published(self, model: nn.Module) -> ViT:
        return model.merged() if isinstance(model, LoraViT) else model


def from_meta(meta: dict) -> LoraClassification:
    """The objective of a stored LoRA fine-tuning run, rebuilt from its config.json entries
    (registered as objective "lora", so that training finds it by name when the run resumes)."""
    try:
        opts = LoraOptions(**(meta.get("finetune") or {}).get("lora", {}))
    except (TypeError, AttributeError) as e:
        raise ValueError(f"bad 'finetune.lora' entry ({e})") from None
    return LoraClassification(opts)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
