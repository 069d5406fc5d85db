"""Activation checkpointing: keep less of the forward pass, recompute it in the backward pass.

`apply_activation_checkpointing(model, mode)` wraps each encoder block's forward in
torch.utils.checkpoint (non-reentrant), after the model is built and before it is wrapped
for DDP or sharded with FSDP; model.py stays as the paper describes it.

- "none": nothing changes;
- "blocks": a block keeps only its input; everything inside it is recomputed in the backward
  pass (one extra forward pass of every block);
- "selective": a block keeps the outputs of its matrix products (aten.mm / addmm / bmm and
  the fused attention kernel) and recomputes only the cheap elementwise work around them
  (LayerNorm, GELU, softmax of the explicit attention, dropout, residual adds).

Recomputation replays the forward pass exactly (the RNG state is restored, so dropout and
stochastic depth draw the same masks): gradients are bit-identical to those without it.

The module's parameters and their names do not change (a bound `forward` is set on each
block instance, which a deepcopy, e.g. for EMA, rebinds to the copy), so state dicts,
optimizers, DDP and FSDP see the same model. With class-token pooling the model computes its
last block for the class token alone without calling the block's forward (vitkit.fastpath):
that block is not recomputed, and it keeps little, as its MLP runs on one token.
"""

from __future__ import annotations

import functools
import types
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

Mode = Literal["none", "blocks", "selective"]
MODES = ("none", "blocks", "selective")

_aten = torch.ops.aten
# Outputs kept by "selective": the products, whose recomputation would cost most of a block.
SAVED_OPS = {
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _keep_products(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def selective_context():
    """The context pair for torch.utils.checkpoint's selective mode: keep the products."""
    return create_selective_checkpoint_contexts(_keep_products)


def _checkpointed(forward, selective: bool):
    """forward(self, *args) run under non-reentrant checkpointing while gradients are on."""

    @functools.wraps(forward)
    def wrapped(self, *args, **kwargs):
        if not torch.is_grad_enabled():  # evaluation: nothing to keep, nothing to recompute
            return forward(self, *args, **kwargs)
        extra = {"context_fn": selective_context} if selective else {}
        return checkpoint(forward, self, *args, use_reentrant=False, **extra, **kwargs)

    return wrapped


def apply_activation_checkpointing(model: nn.Module, mode: Mode = "blocks") -> nn.Module:
    """Recompute every encoder block of `model` (model.blocks) in the backward pass; in place."""
    if mode not in MODES:
        raise ValueError(f"activation checkpointing must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "none":
        return model
    for block in model.blocks:
        if getattr(block, "_vitkit_checkpointing", None):
            raise ValueError("activation checkpointing is already applied to this model")
        forward = type(block).forward
        block.forward = types.MethodType(_checkpointed(forward, mode == "selective"), block)
        block._vitkit_checkpointing = mode
    return model


def checkpointing_mode(model: nn.Module) -> str:
    """The activation checkpointing applied to model's blocks ("none" when none is)."""
    blocks = getattr(model, "blocks", [])
    return getattr(blocks[0], "_vitkit_checkpointing", "none") if len(blocks) else "none"
