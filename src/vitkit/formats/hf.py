"""Hugging Face transformers' ViTModel / ViTForImageClassification state dicts and configs.

HF keeps separate query, key and value projections; vitkit fuses them into one qkv matrix.
The optional pooler (dense + tanh on the class token) is the paper's pre-logits layer.
Two namings exist: files on disk (and transformers 4 modules) say
``encoder.layer.N.attention.attention.query``; transformers 5 modules say
``layers.N.attention.q_proj`` and convert files when they load them. Both are read;
``to_hf`` writes the file naming unless asked for the module one.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from ..data.preprocess import InputSpec
from ..files import atomic_save_tensors, atomic_write_json, read_json
from ..notices import VitkitWarning
from .common import Source, read_state_dict

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
MULTI_LABEL = "multi_label_classification"  # config.json problem_type of a sigmoid-per-tag model
PREPROCESSOR_NAME = "preprocessor_config.json"
_RESAMPLE_IDS = {"bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling, as transformers stores it
_LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601-2, PIL's RGB -> "L"
_HF_GELU = {"gelu": "exact", "gelu_python": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}

# vitkit block suffix -> (file naming, transformers 5 module naming)
_BLOCK = {
    "norm1": ("layernorm_before", "layernorm_before"),
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "mlp.fc1": ("intermediate.dense", "mlp.fc1"),
    "mlp.fc2": ("output.dense", "mlp.fc2"),
}
_QKV = (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
        ("attention.q_proj", "attention.k_proj", "attention.v_proj"))
_LAYERS = ("encoder.layer.", "layers.")
_TOP = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj": "embeddings.patch_embeddings.projection",
    "norm": "layernorm",
    "pre_logits.dense": "pooler.dense",
}


def _split(key: str) -> tuple[str, str]:
    if key in ("cls_token", "pos_embed", *_TOP.values()):
        return key, ""
    name, _, leaf = key.rpartition(".")
    return name, leaf


def to_hf(sd: dict[str, torch.Tensor], prefix: str = "vit.", naming: str = "file"
          ) -> dict[str, torch.Tensor]:
    """vitkit state dict -> HF ViTForImageClassification state dict.

    prefix "" gives a bare ViTModel; naming "module" gives transformers 5 module names.
    """
    n = {"file": 0, "module": 1}[naming]
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        name, leaf = _split(k)
        dot_leaf = f".{leaf}" if leaf else ""
        if k.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            base = f"{prefix}{_LAYERS[n]}{i}."
            if rest == "attn.qkv":
                for part, t in zip(_QKV[n], v.chunk(3, dim=0), strict=True):
                    out[f"{base}{part}{dot_leaf}"] = t.clone()
            elif rest in _BLOCK:
                out[f"{base}{_BLOCK[rest][n]}{dot_leaf}"] = v
            else:
                raise ValueError(f"no Hugging Face ViT key for vitkit key {k!r}")
        elif name == "head":
            out[f"classifier{dot_leaf}"] = v
        elif name in _TOP:
            out[prefix + _TOP[name] + dot_leaf] = v
        else:
            raise ValueError(f"no Hugging Face ViT key for vitkit key {k!r}")
    return out


def from_hf(sd: dict[str, torch.Tensor], unknown: list[str] | None = None) -> dict[str, torch.Tensor]:
    """HF ViTModel / ViTForImageClassification state dict (either naming, with or without
    the 'vit.' prefix) -> vitkit state dict. Keys it does not know are appended to
    `unknown` when given, else refused."""
    inv_top = {v: k for k, v in _TOP.items()}
    inv_block = {hf: ours for ours, names in _BLOCK.items() for hf in names}
    inv_qkv = {hf: j for names in _QKV for j, hf in enumerate(names)}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    leftover = []
    for k, v in sd.items():
        key = k[4:] if k.startswith("vit.") else k
        name, leaf = _split(key)
        dot_leaf = f".{leaf}" if leaf else ""
        layer = next((p for p in _LAYERS if name.startswith(p)), None)
        if name == "classifier":
            out["head" + dot_leaf] = v
        elif name in inv_top:
            out[inv_top[name] + dot_leaf] = v
        elif layer:
            i, rest = name[len(layer):].split(".", 1)
            if rest in inv_qkv:
                qkv.setdefault((i, leaf), {})[inv_qkv[rest]] = v
            elif rest in inv_block:
                out[f"blocks.{i}.{inv_block[rest]}{dot_leaf}"] = v
            else:
                leftover.append(k)
        else:
            leftover.append(k)
    if leftover and unknown is None:
        raise ValueError(f"unexpected keys in Hugging Face ViT checkpoint: {', '.join(leftover[:6])}")
    if unknown is not None:
        unknown.extend(leftover)
    for (i, leaf), parts in qkv.items():
        if len(parts) != 3:
            raise ValueError(f"layer {i} attention lacks some of query/key/value {leaf}")
        out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out


def config_to_hf(config) -> dict:
    """Keyword arguments for transformers.ViTConfig describing the same architecture."""
    if config.pool != "cls" or config.pos_embed != "learn" or config.stem != "patch":
        raise ValueError("Hugging Face ViT supports only class-token pooling, learned position "
                         "embeddings and the plain patch embedding")
    h, w = config.image_hw
    if h != w:
        raise ValueError(f"Hugging Face ViT needs a square image size, got {h}x{w}")
    return dict(
        image_size=h, patch_size=config.patch_size, num_channels=config.num_channels,
        hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.mlp_size,
        hidden_act="gelu" if config.gelu == "exact" else "gelu_pytorch_tanh",
        layer_norm_eps=config.layer_norm_eps, qkv_bias=config.qkv_bias,
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.attention_dropout,
        num_labels=config.num_classes,
        pooler_output_size=config.representation_size or config.hidden_size, pooler_act="tanh",
    )


def read_hf_folder(directory: Path, cfg: dict) -> Source:
    """A transformers ViT folder: config.json (architecture facts, labels) and its weights."""
    cfg_path = directory / "config.json"
    if cfg.get("model_type", "vit") != "vit":
        raise ValueError(f"{cfg_path}: model_type {cfg['model_type']!r} is not a ViT vitkit can load")
    weights = next((directory / n for n in HF_WEIGHTS if (directory / n).is_file()), None)
    if weights is None:
        sharded = [n for n in (f"{w}.index.json" for w in ("model.safetensors", "pytorch_model.bin"))
                   if (directory / n).is_file()]
        if sharded:
            raise ValueError(f"{directory / sharded[0]}: sharded checkpoints are not supported")
        raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")
    unknown: list[str] = []
    sd = from_hf(read_state_dict(weights), unknown)
    act = cfg.get("hidden_act", "gelu")
    if act not in _HF_GELU:
        raise ValueError(f"{cfg_path}: hidden_act {act!r} is not a GELU vitkit models")
    known: dict[str, Any] = dict(gelu=_HF_GELU[act], layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)))
    if "num_attention_heads" in cfg:
        known["num_heads"] = int(cfg["num_attention_heads"])
    if "image_size" in cfg:
        s = cfg["image_size"]
        known["image_size"] = int(s) if isinstance(s, int) else tuple(int(x) for x in s)
    src = Source("hf", sd, detail=f"{weights.name}, hidden_act {act}", known=known, unknown=unknown)
    if "pre_logits.dense.weight" in sd:
        if "head.weight" in sd:  # ViTForImageClassification classifies the class token, not the pooler
            for k in ("pre_logits.dense.weight", "pre_logits.dense.bias"):
                sd.pop(k, None)
            src.dropped.append("pooler.dense (ViTForImageClassification does not use it)")
        elif cfg.get("pooler_act", "tanh") != "tanh":
            raise ValueError(f"{cfg_path}: pooler_act {cfg['pooler_act']!r}; vitkit's pre-logits are tanh")
    labels = cfg.get("id2label") or {}
    n = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    if n and cfg.get("problem_type") == MULTI_LABEL:
        t = cfg.get("multilabel_threshold")
        src.extra["multilabel"] = {"threshold": t if isinstance(t, float) and 0 < t < 1 else 0.5}
        if "multilabel_threshold" not in cfg:
            src.notes.append("multi-label model without a stored threshold: tags at or over 0.5 are "
                             "predicted")
    if n and len(labels) == n:
        names = [labels.get(str(i), labels.get(i)) for i in range(n)]
        if all(names) and names != [f"LABEL_{i}" for i in range(n)]:
            src.extra["classes"] = names
    pre = directory / PREPROCESSOR_NAME
    if pre.is_file():
        p = read_json(pre)
        if "image_mean" in p and "image_std" in p:
            src.extra["data"] = dict(mean=list(p["image_mean"]), std=list(p["image_std"]),
                                     **_spec_from_processor(p))
    return src


def write_hf_folder(sd: dict[str, torch.Tensor], config, out: Path, classes: list[str] | None,
                    notes: list[str], spec: InputSpec | None = None, threshold: float | None = None) -> Path:
    """ViTForImageClassification, or ViTModel (with its pooler) when the model is headless, with
    the preprocessor_config.json that transformers' pipeline and AutoImageProcessor need.

    `threshold`: a multi-label model's decision threshold; the config then says problem_type
    "multi_label_classification" (transformers' sigmoid and BCE) and keeps the threshold as
    "multilabel_threshold", which transformers carries along and vitkit reads back.

    transformers feeds every image as RGB: a grayscale model is written as a 3-channel one whose
    patch embedding takes the luma of the RGB input (PIL's conversion to "L", which vitkit
    applies), so the same images give the same inputs."""
    rep = config.representation_size
    if rep and config.num_classes:
        raise ValueError("Hugging Face's ViTForImageClassification has no pre-logits layer: drop it "
                         "(load with num_classes and without keep_pre_logits) or export to npz")
    if spec is None:
        spec = InputSpec.for_model(config.image_hw, config.num_channels)[0]
    if config.num_channels == 1:
        sd = dict(sd, **{"patch_embed.proj.weight": fold_luma(sd["patch_embed.proj.weight"])})
        config = config.replace(num_channels=3)
        spec = dataclasses.replace(spec, channels=3, mean=spec.mean * 3, std=spec.std * 3)
        warnings.warn("the Hugging Face pipeline converts images to RGB; the grayscale model is "
                      "written with 3 input channels that it turns into luma (0.299 R + 0.587 G + 0.114 B), "
                      "as vitkit converts images to grayscale", VitkitWarning, stacklevel=3)
    hf = config_to_hf(config.replace(pos_embed="learn"))
    if config.num_classes:
        arch, prefix = "ViTForImageClassification", "vit."
        if classes and len(classes) == config.num_classes:
            hf["id2label"] = {str(i): c for i, c in enumerate(classes)}
            hf["label2id"] = {c: i for i, c in enumerate(classes)}
        if threshold is not None:
            hf.update(problem_type=MULTI_LABEL, multilabel_threshold=threshold)
    else:
        arch, prefix = "ViTModel", ""
        hf.pop("num_labels")
        if not rep:
            notes.append("no pooler weights: ViTModel initializes its pooler randomly")
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out / HF_WEIGHTS[0], to_hf(sd, prefix=prefix))
    atomic_write_json(out / "config.json", {"architectures": [arch], "model_type": "vit", **hf})
    atomic_write_json(out / PREPROCESSOR_NAME, processor_config(spec))
    return out


def fold_luma(weight: torch.Tensor) -> torch.Tensor:
    """A 1-channel patch embedding (D, 1, P, P) as a 3-channel one applying it to the luma:
    with the same mean and std on all three channels, sum_c w_c (x_c - m) / s = (L - m) / s."""
    return weight * _LUMA.to(weight.dtype).view(1, 3, 1, 1)


def processor_config(spec: InputSpec) -> dict:
    """preprocessor_config.json for a transformers image processor preparing images as vitkit does:
    ViTImageProcessor (resize the whole image) or, with crop_pct < 1, BitImageProcessor (shorter
    side to size / crop_pct, then the centre crop, as timm's and vitkit's evaluation)."""
    h, w = spec.image_size
    common = dict(do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(spec.mean),
                  image_std=list(spec.std), resample=_RESAMPLE_IDS[spec.interpolation], do_convert_rgb=True)
    if spec.crop_pct >= 1.0:
        return dict(image_processor_type="ViTImageProcessor", do_resize=True,
                    size={"height": h, "width": w}, **common)
    return dict(image_processor_type="BitImageProcessor", do_resize=True,
                size={"shortest_edge": math.floor(max(h, w) / spec.crop_pct)}, do_center_crop=True,
                crop_size={"height": h, "width": w}, **common)


def _spec_from_processor(p: dict) -> dict:
    """Resize rule and crop of a preprocessor_config.json, in vitkit's InputSpec terms."""
    out: dict[str, Any] = {}
    names = {v: k for k, v in _RESAMPLE_IDS.items()}
    if p.get("resample") in names:
        out["interpolation"] = names[p["resample"]]
    size, crop = p.get("size") or {}, p.get("crop_size") or {}
    if p.get("do_center_crop") and isinstance(size, dict) and "shortest_edge" in size and "height" in crop:
        out["crop_pct"] = max(crop["height"], crop.get("width", 0)) / size["shortest_edge"]
    return out
