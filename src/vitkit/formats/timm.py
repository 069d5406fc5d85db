"""timm's VisionTransformer state dicts.

timm names the same modules vitkit does, except for the optional parts it has and the
paper's ViT does not (layer scale, q/k norm, register tokens, ...): those are refused by
name instead of being silently dropped.
"""

from __future__ import annotations

import torch

# timm keys that change the architecture away from the paper's ViT.
_UNSUPPORTED = ("ls1.", "ls2.", "q_norm.", "k_norm.", "norm_pre.", "reg_token", "attn_pool.",
                "fc_norm.", "norm1_post", "norm2_post", "head_drop", "dist_token", "head_dist.",
                "patch_embed.norm.", "patch_embed.backbone.", "mask_token")


def from_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm VisionTransformer state dict -> vitkit state dict."""
    bad = sorted(k for k in sd if any(u in k for u in _UNSUPPORTED))
    if bad:
        raise ValueError(f"timm checkpoint has parts vitkit's ViT does not model: {', '.join(bad[:6])}")
    out = {}
    for k, v in sd.items():
        if k.startswith("pre_logits.fc."):  # older timm releases with a representation layer
            k = k.replace("pre_logits.fc.", "pre_logits.dense.")
        out[k] = v
    return out


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
