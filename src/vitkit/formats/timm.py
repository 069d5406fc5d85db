"""timm's VisionTransformer state dicts.

timm names the same modules vitkit does, except for the optional parts it has and the
paper's ViT does not (layer scale, q/k norm, ...): those are refused by name instead of
being silently dropped. Register tokens (reg_token) are read as vitkit's registers, and
DeiT's distillation token and head (dist_token, head_dist) as vitkit's distill_token.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import VARIANTS, variant_name
from .common import Source, read_state_dict

_SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
_GELUS = {"gelu": "exact", "gelu_tanh": "tanh"}  # timm's act_layer names

# timm keys that change the architecture away from the paper's ViT.
_UNSUPPORTED = ("ls1.", "ls2.", "q_norm.", "k_norm.", "norm_pre.", "attn_pool.",
                "fc_norm.", "norm1_post", "norm2_post", "head_drop",
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
    args = cfg.get("model_args") or {}  # what the architecture's defaults are built with
    if isinstance(args.get("num_heads"), int):
        known["num_heads"] = args["num_heads"]
    if args.get("act_layer") in _GELUS:
        known["gelu"] = _GELUS[args["act_layer"]]
    size = args.get("img_size")
    if size is not None:
        known["image_size"] = size if isinstance(size, int) else tuple(size)
    if args.get("global_pool", cfg.get("global_pool")) == "avg":
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
        class_token=config.class_token, reg_tokens=config.register_tokens, fc_norm=False, act_layer=act,
        no_embed_class=False, pos_embed="learn" if config.pos_embed == "learn" else "none",
    )


def timm_architecture(config) -> str:
    """A timm model name to build the folder's model with: the named variant's own when timm
    has it, else a generic one (config.json's model_args set every size anyway)."""
    name = variant_name(config)
    if name:
        size, patch = name.split("/")
        timm_size = next(k for k, v in _SIZES.items() if v == size)
        candidate = f"vit_{timm_size}_patch{patch}_{config.image_hw[0]}"
        try:
            import timm
        except ImportError:
            return "vit_base_patch16_224"
        if timm.is_model(candidate):
            return candidate
    return "vit_base_patch16_224"


def timm_folder_config(config, spec, classes: list[str] | None, pos_table: bool) -> dict:
    """config.json of a folder that timm.create_model("local-dir:FOLDER", pretrained=True) opens:
    architecture, model_args (JSON: act_layer by name) and pretrained_cfg (input size, mean,
    std, resize rule, crop, label names)."""
    args = timm_kwargs(config)
    args.update(img_size=list(config.image_hw), act_layer="gelu" if config.gelu == "exact" else "gelu_tanh")
    if pos_table:  # fixed sin-cos embeddings are written as a table
        args["pos_embed"] = "learn"
    pretrained = dict(
        input_size=[config.num_channels, *config.image_hw], fixed_input_size=True,
        interpolation=spec.interpolation, crop_pct=spec.crop_pct, crop_mode="center",
        mean=list(spec.mean), std=list(spec.std), num_classes=config.num_classes,
        first_conv="patch_embed.proj", classifier="head")
    out = dict(architecture=timm_architecture(config), num_classes=config.num_classes,
               num_features=config.hidden_size, global_pool=args["global_pool"], model_args=args,
               pretrained_cfg=pretrained)
    if classes and len(classes) == config.num_classes:
        out["label_names"] = list(classes)
    return out

