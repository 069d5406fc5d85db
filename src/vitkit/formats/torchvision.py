"""torchvision's ``vit_*`` models (torchvision.models.VisionTransformer) state dicts.

torchvision computes the same ViT: its nn.MultiheadAttention keeps q, k and v stacked in
``in_proj_weight`` in the order vitkit's fused qkv uses, its LayerNorms use eps 1e-6 and its
GELU is the exact one. Only the names differ. The convolutional stem of ``conv_stem_configs``
is a different architecture and is refused by name.
"""

from __future__ import annotations

import re

import torch

_TOP = {
    "class_token": "cls_token",
    "encoder.pos_embedding": "pos_embed",
    "conv_proj.weight": "patch_embed.proj.weight",
    "conv_proj.bias": "patch_embed.proj.bias",
    "encoder.ln.weight": "norm.weight",
    "encoder.ln.bias": "norm.bias",
    "heads.head.weight": "head.weight",
    "heads.head.bias": "head.bias",
    "heads.pre_logits.weight": "pre_logits.dense.weight",
    "heads.pre_logits.bias": "pre_logits.dense.bias",
}
# block suffix -> vitkit suffix; mlp.linear_1/2 are the names of torchvision < 0.13
_BLOCK = {
    "ln_1": "norm1",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj": "attn.proj",
    "ln_2": "norm2",
    "mlp.0": "mlp.fc1",
    "mlp.3": "mlp.fc2",
    "mlp.linear_1": "mlp.fc1",
    "mlp.linear_2": "mlp.fc2",
}
_LAYER = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$")


def from_torchvision(sd: dict[str, torch.Tensor], unknown: list[str] | None = None
                     ) -> dict[str, torch.Tensor]:
    """torchvision VisionTransformer state dict -> vitkit state dict.

    Keys it does not know are appended to `unknown` when given, else refused.
    """
    stem = sorted(k for k in sd if k.startswith("conv_proj.") and k not in _TOP)
    if stem:
        raise ValueError(f"torchvision convolutional stem (conv_stem_configs) is not modelled: {stem[0]}")
    out: dict[str, torch.Tensor] = {}
    rest = []
    for k, v in sd.items():
        if k in _TOP:
            out[_TOP[k]] = v
            continue
        m = _LAYER.match(k)
        if m:
            i, tail = m.groups()
            for theirs, ours in _BLOCK.items():
                if tail == theirs or tail.startswith(theirs + "."):
                    out[f"blocks.{i}.{ours}{tail[len(theirs):]}"] = v
                    break
            else:
                rest.append(k)
        else:
            rest.append(k)
    if rest and unknown is None:
        raise ValueError(f"unexpected keys in torchvision ViT state dict: {', '.join(rest[:6])}")
    if unknown is not None:
        unknown.extend(rest)
    return out

