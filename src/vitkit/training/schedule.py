"""The learning-rate schedule and the optimizer, as the official code sets them up."""

from __future__ import annotations

import math

import torch


def lr_factor(progress: float, warmup: float, schedule: str, min_ratio: float) -> float:
    """Linear warmup over the first `warmup` fraction, then cosine / linear decay / constant."""
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    if schedule == "constant":
        return 1.0
    t = min(max((progress - warmup) / max(1.0 - warmup, 1e-8), 0.0), 1.0)
    decay = 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t
    return min_ratio + (1.0 - min_ratio) * decay


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """Weight decay on matrices only: biases, norms, position embeddings and the class token
    are left undecayed, as in the official code."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in ("pos_embed", "cls_token") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # One fused kernel per step instead of a chain of elementwise passes over every tensor:
    # the CIFAR training step ran about 1.2x faster with it in bf16 (benchmarks/README.md).
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)
    if cfg.name == "adam":  # classic Adam with L2 added to the gradient
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)
