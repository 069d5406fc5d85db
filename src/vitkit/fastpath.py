"""Faster ways to compute what model.py computes, kept apart so the model reads like the paper.

- `attend`: softmax(QK^T / sqrt(d)) V through PyTorch's fused kernel, except under bf16 on a
  CPU, where that kernel has no fast path (its backward was measured about 6x slower than
  plain batched products): there the products are explicit, and in training the N x N
  matrices are recomputed in the backward pass instead of kept, unless they are small
  (KEEP_ATTENTION_ELEMENTS), where recomputing them costs time and saves next to nothing.
- `forward_class_token`: with class-token pooling only the class token of the last block
  reaches the head, so that block computes its query, attention output and MLP for that
  token alone (keys and values still come from every token): about 1/L of the work saved,
  the same logits (tests compare both paths with the reference forward).

Nothing here imports the model; it works on the modules it is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(QK^T * scale) V; returns the output and the weights. PyTorch's softmax kernels
    compute in fp32 for bf16 inputs and round only the result, so no fp32 copy is made here."""
    # k.contiguous(): K^T is then a transposed view the batched product reads as it is,
    # which is cheaper than the strided copy that transposing the qkv slice would need
    a = ((q * scale) @ k.contiguous().transpose(-2, -1)).softmax(dim=-1).to(q.dtype)
    return F.dropout(a, dropout, dropout > 0) @ v, a


def _attention_output(q, k, v, scale: float, dropout: float) -> torch.Tensor:
    return explicit_attention(q, k, v, scale, dropout)[0]


def _checkpointed_attention(q, k, v, scale: float, dropout: float, max_elements: int = 2**20) -> torch.Tensor:
    """Explicit attention that keeps no N x N matrix for the backward pass: each slice of
    the batch is recomputed there, one at a time, so at most max_elements scores are alive."""
    b, h, n, _ = q.shape
    step = max(1, max_elements // (h * n * k.shape[2]))
    outs = [checkpoint(_attention_output, q[i:i + step], k[i:i + step], v[i:i + step], scale, dropout,
                       use_reentrant=False) for i in range(0, b, step)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


# Attention matrices (batch x heads x N x N) up to this many elements are kept for the backward
# pass (a few MiB per block in bf16): recomputing them slowed small models' training steps by
# a quarter (benchmarks/README.md). Beyond it (ViT-B/16 at 224: 12 x 197 x 197 per image)
# keeping them would cost more memory than the fused kernel's training, which keeps none.
KEEP_ATTENTION_ELEMENTS = 2**22


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout: float = 0.0
           ) -> torch.Tensor:
    """softmax(QK^T * scale) V for (B, heads, N, head_dim) inputs, by the fastest exact route."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        large = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] > KEEP_ATTENTION_ELEMENTS
        if torch.is_grad_enabled() and q.requires_grad and large:
            # Recompute the N x N matrices in the backward pass instead of keeping them (the
            # fused kernel keeps none either): training memory stays at the fused kernel's.
            return _checkpointed_attention(q, k, v, scale, dropout)
        return explicit_attention(q, k, v, scale, dropout)[0]
    # the fused kernel never materializes the N x N matrix when it can avoid it
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # its default scale is 1/sqrt(d)


def class_token_block(block: nn.Module, x: torch.Tensor, tokens: int = 1) -> torch.Tensor:
    """An encoder block (Eq. 2, 3) computed for the first `tokens` tokens alone: (B, tokens, D)."""
    attn = block.attn
    b, n, d = x.shape
    h, hd, t = attn.num_heads, attn.head_dim, tokens
    y = block.norm1(x)
    w, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(y[:, :t], w[:d], None if bias is None else bias[:d]).view(b, t, h, hd).transpose(1, 2)
    kv = F.linear(y, w[d:], None if bias is None else bias[d:])
    k, v = kv.view(b, n, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
    a = attend(q, k, v, attn.scale, attn.attn_drop if attn.training else 0.0)
    a = attn.proj_drop(attn.proj(a.transpose(1, 2).reshape(b, t, d)))
    x = x[:, :t] + block.drop_path(a)
    return x + block.drop_path(block.mlp(block.norm2(x)))


def uses_class_token_path(model: nn.Module) -> bool:
    """Class-token pooling, and a last block whose qkv is a plain Linear (class_token_block
    reads its weight; a wrapped one, such as a LoRA adapter, must run its own forward)."""
    return (model.config.pool == "cls" and len(model.blocks) > 0
            and isinstance(model.blocks[-1].attn.qkv, nn.Linear))


def forward_class_token(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits of model(x) with the last block run for the tokens the heads read alone (the
    class token, and the distillation token when there is one)."""
    x = model.embed(x)
    for block in model.blocks[:-1]:
        x, _ = block(x)
    x = class_token_block(model.blocks[-1], x, 2 if model.config.distill_token else 1)
    return model.forward_head(model.norm(x))
