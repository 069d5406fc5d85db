"""timm's VisionTransformer state dicts.

timm names the same modules vitkit does, except for the optional parts it has and the
paper's ViT does not (layer scale, q/k norm, register tokens, ...): those are refused by
name instead of being silently dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import VARIANTS
from .common import Source, read_state_dict

_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}

# timm keys that change the architecture away from the paper's ViT.
_UNSUPPORTED = ("ls1.", "ls2.", "q_norm.", "k_norm.", "norm_pre.", "reg_token", "attn_pool.",
                "fc_norm.", "norm1_post", "norm2_post", "head_drop", "dist_token", "head_dist.",
                "patch_embed.norm.", "patch_embed.backbone.", "mask_token")


def from_timm(sd: dict[str, torch.Tensor], unknown: list[str] | None = None) -> dict[str, torch.Tensor]:
    """timm VisionTransformer state dict -> vitkit state dict.

    Parts that change the architecture are refused by name. timm names are vitkit's, so
    every other key passes through and the loader's strict check finds strangers (`unknown`
    stays empty; it is there for the same signature as the other readers)."""
    bad = sorted(k for k in sd if any(u in k for u in _UNSUPPORTED))
    if bad:
        raise ValueError(f"timm checkpoint has parts vitkit's ViT does not model: {', '.join(bad[:6])}")
    out = {}
    for k, v in sd.items():
        if k.startswith("pre_logits.fc."):  # older timm releases with a representation layer
            k = k.replace("pre_logits.fc.", "pre_logits.dense.")
        out[k] = v
    return out


def read_timm_folder(directory: Path, cfg: dict) -> Source:
    """A folder as timm publishes models on the Hugging Face Hub: config.json with
    "architecture" and "pretrained_cfg" (input size, mean, std, interpolation, crop_pct, label
    names) beside model.safetensors or pytorch_model.bin."""
    weights = next((directory / n for n in ("model.safetensors", "pytorch_model.bin")
                    if (directory / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")
    arch = str(cfg.get("architecture", ""))
    if arch and not arch.startswith("vit_"):
        raise ValueError(f"{directory / 'config.json'}: timm architecture {arch!r} is not a ViT vitkit loads")
    known: dict = dict(layer_norm_eps=1e-6, gelu="exact")
    m = re.match(r"vit_(tiny|small|base|large|huge)_patch(\d+)", arch)
    if m:
        known["num_heads"] = VARIANTS[_SIZES[m.group(1)]][3]
    if cfg.get("global_pool") == "avg":
        known["pool"] = "mean"
    pre = cfg.get("pretrained_cfg") or {}
    data: dict = {}
    if "mean" in pre and "std" in pre:
        data.update(mean=list(pre["mean"]), std=list(pre["std"]))
    if pre.get("interpolation") in ("bicubic", "bilinear"):
        data["interpolation"] = pre["interpolation"]
    if pre.get("crop_pct"):
        data["crop_pct"] = float(pre["crop_pct"])
    extra: dict = {"data": data} if "mean" in data else {}
    labels = pre.get("label_names") or cfg.get("label_names")
    if labels:
        extra["classes"] = list(labels)
    src = Source("timm", from_timm(read_state_dict(weights)), detail=f"{weights.name}, {arch or 'ViT'}",
                 known=known, extra=extra)
    return src


def to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vitkit state dict -> timm VisionTransformer state dict (timm has no pre-logits layer)."""
    if any(k.startswith("pre_logits.") for k in sd):
        raise ValueError("timm's VisionTransformer has no pre-logits layer: drop it first "
                         "(ViT.drop_pre_logits) or export to hf or npz")
    if any(k.startswith("patch_embed.stem.") for k in sd):
        raise ValueError("timm's VisionTransformer has no convolutional stem (stem='conv')")
    return dict(sd)


def timm_kwargs(config) -> dict:
    """Constructor arguments of timm.models.vision_transformer.VisionTransformer for a config."""
    import torch.nn as nn

    act = nn.GELU if config.gelu == "exact" else (lambda: nn.GELU(approximate="tanh"))
    return dict(
        img_size=config.image_hw, patch_size=config.patch_size, in_chans=config.num_channels,
        num_classes=config.num_classes, global_pool="token" if config.pool == "cls" else "avg",
        embed_dim=config.hidden_size, depth=config.num_layers, num_heads=config.num_heads,
        mlp_ratio=config.mlp_size / config.hidden_size, qkv_bias=config.qkv_bias,
        class_token=config.class_token, fc_norm=False, act_layer=act,
        no_embed_class=False, pos_embed="learn" if config.pos_embed == "learn" else "none",
    )
