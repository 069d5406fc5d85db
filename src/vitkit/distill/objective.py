"""Distillation as a training objective: the trainer's loop, checkpoints, resume, budgets and
strategies run it as they run classification.

Each training sample carries its target and the teacher's logits for the same augmented view,
packed side by side in one (B, 2K) label row (vitkit.distill.views makes them), so the teacher
never runs inside the training loop.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..model import ViT
from ..training.objectives import Classification
from .losses import hard_distillation, soft_distillation

Loss = Literal["soft", "hard", "token", "labels"]
LOSSES = ("soft", "hard", "token", "labels")


class TokenStudent(nn.Module):
    """A ViT with a distillation token, answering with both heads while training (the class
    head's and the distillation head's logits) and as the ViT itself (their average) in eval
    mode, so the trainer's evaluation and the published model agree."""

    def __init__(self, model: ViT):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return self.model(x)
        m = self.model
        tokens = m.forward_features(x)
        return m.head(m.pre_logits(tokens[:, 0])), m.head_dist(m.pre_logits(tokens[:, 1]))


class Distillation(Classification):
    """Classification taught by a teacher's logits; `loss` is soft, hard, token or labels (the
    same views and run with the teacher's logits ignored: the baseline distillation is measured
    against)."""

    name = "classification"  # what the trainer evaluates and publishes: a classifier

    def __init__(self, loss: Loss, num_classes: int, alpha: float = 0.5, tau: float = 1.0):
        if loss not in LOSSES:
            raise ValueError(f"--distill.loss {loss!r}: expected one of {', '.join(LOSSES)}")
        self.kind, self.k, self.alpha, self.tau = loss, num_classes, alpha, tau

    def wrap(self, model: ViT, spec) -> nn.Module:
        if self.kind == "token":
            if not model.config.distill_token:
                raise ValueError("--distill.loss token needs a student with a distillation token "
                                 "(--model.distill_token true)")
            return TokenStudent(model)
        return model

    def published(self, model: nn.Module) -> ViT:
        return model.model if isinstance(model, TokenStudent) else model

    def loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
        target, teacher = y[:, :self.k], y[:, self.k:]
        hard = target.argmax(1)
        if self.kind == "token":
            cls, dist = net(x)
            loss = hard_distillation(cls, teacher, target, smoothing, student_dist=dist)
            logits = (cls + dist) / 2
        else:
            logits = net(x)
            if self.kind == "soft":
                loss = soft_distillation(logits, teacher, target, self.alpha, self.tau, smoothing)
            elif self.kind == "hard":
                loss = hard_distillation(logits, teacher, target, smoothing)
            else:
                loss = torch.nn.functional.cross_entropy(logits.float(), target, label_smoothing=smoothing)
        return loss, (logits.detach().argmax(1) == hard).sum()


def from_meta(meta: dict) -> Distillation:
    """The objective of a stored distillation run, rebuilt from its config.json entries
    (registered as objective "distill"; the teacher's logits travel with the views, so the
    objective needs no teacher)."""
    entry = meta.get("distill")
    try:
        return Distillation(entry["loss"], len(meta["classes"]), float(entry["alpha"]), float(entry["tau"]))
    except (TypeError, KeyError) as e:
        raise ValueError(f"bad 'distill' entry ({type(e).__name__}: {e})") from None
