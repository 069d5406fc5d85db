"""Checkpoints from anywhere: official .npz, timm, Hugging Face, torchvision and vitkit.

``load(path)`` finds the format, maps the names to vitkit's, infers the architecture from
the tensors themselves (width, depth, patch, grid, classes, pre-logits, pooling), optionally
resizes the position embeddings to a new image size (paper Section 3.2) and replaces the
head, and records all of it in a LoadReport. Nothing is unpickled: PyTorch files are read
with ``torch.load(weights_only=True)``, .npz files with ``allow_pickle=False``.
``convert`` loads and writes the model back out as timm, Hugging Face, .npz or vitkit files.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from .checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    load_state_dict_checked,
    save_pretrained,
)
from .config import VARIANTS, ViTConfig
from .formats.hf import config_to_hf, from_hf, to_hf
from .formats.npz import from_npz, read_npz, to_npz
from .formats.timm import from_timm, to_timm
from .formats.torchvision import from_torchvision
from .model import ViT, conv_stem_plan
from .posemb import ResizeMode, resample_pos_embed

FORMATS = ("vitkit", "hf", "timm", "torchvision", "npz")
EXPORT_FORMATS = ("vitkit", "timm", "hf", "npz")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
_HF_GELU = {"gelu": "exact", "gelu_python": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
# Width -> heads of the named variants: timm and torchvision state dicts do not record heads.
_HEADS_BY_WIDTH = {hidden: heads for hidden, _, _, heads in VARIANTS.values()}
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(ViTConfig)}


@dataclass
class LoadReport:
    """What a load found and did: format, inferred config, and every key it did not use as is."""

    path: str
    format: str = ""
    detail: str = ""
    config: ViTConfig | None = None
    variant: str | None = None
    dropped: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # stored beside the weights in vitkit's format

    def summary(self) -> str:
        lines = [f"{self.path}: {self.format}" + (f" ({self.detail})" if self.detail else "")]
        if self.config is not None:
            c = self.config
            h, w = c.image_hw
            shape = f"D={c.hidden_size} L={c.num_layers} MLP={c.mlp_size} heads={c.num_heads}"
            parts = [self.variant or shape,
                     f"image {h}x{w}", f"patch {c.patch_size}", f"{c.num_classes} classes",
                     f"pool {c.pool}", f"gelu {c.gelu}", f"eps {c.layer_norm_eps:g}"]
            if c.representation_size:
                parts.insert(4, f"pre-logits {c.representation_size}")
            if c.pos_embed != "learn":
                parts.append(f"pos_embed {c.pos_embed}")
            if c.stem != "patch":
                parts.append(f"{c.stem} stem")
            lines.append("  config: " + ", ".join(parts))
        for name in ("dropped", "resized", "missing", "unexpected", "mismatched", "notes"):
            items = getattr(self, name)
            if items:
                label = "note" if name == "notes" else name
                lines.append(f"  {label}: " + "; ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
        return "\n".join(lines)

    __str__ = summary


@dataclass
class _Source:
    """A checkpoint read and renamed to vitkit keys, before any model is built."""

    format: str
    sd: dict[str, torch.Tensor]
    detail: str = ""
    config: ViTConfig | None = None  # known exactly (vitkit's own files)
    known: dict = field(default_factory=dict)  # config fields the file states (HF config.json, npz heads)
    unknown: list[str] = field(default_factory=list)  # keys with no vitkit name
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


# ---- reading files -------------------------------------------------------------------------
def torch_load(path: str | Path) -> Any:
    """torch.load that unpickles nothing but tensors and plain containers."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((ln.strip() for ln in str(e).splitlines() if "nsupported" in ln), "not plain tensors")
        raise ValueError(f"{path}: refused: loading it would unpickle arbitrary Python objects ({why})"
                         ) from None
    except (RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable PyTorch file ({first})") from None


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a torch file: bare, or under 'state_dict' / 'model' as training
    checkpoints store it; a DistributedDataParallel 'module.' prefix is removed."""
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "module", "state_dict_ema", "model_ema"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: holds {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:6]))}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _sniff(path: Path) -> str:
    """'npz', 'safetensors' or 'torch' for a file, by suffix and else by content."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
        return "torch"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return "npz" if any(n.endswith(".npy") for n in z.namelist()) else "torch"
    with open(path, "rb") as f:
        head = f.read(9)
    return "safetensors" if len(head) == 9 and head[8:9] == b"{" else "torch"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or PyTorch file, read safely."""
    path = Path(path)
    if _sniff(path) == "safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    return _unwrap(torch_load(path), path)


def _detect(sd: dict[str, torch.Tensor], path: Path) -> str:
    """Which library's names a state dict uses."""
    if "patch_embed.proj.weight" in sd:
        vitkit_only = any(k.startswith(("pre_logits.dense.", "patch_embed.stem.")) for k in sd)
        return "vitkit" if vitkit_only else "timm"
    if "conv_proj.weight" in sd or "class_token" in sd or "encoder.pos_embedding" in sd:
        return "torchvision"
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in sd):
        return "hf"
    raise ValueError(f"{path}: not a ViT state dict vitkit knows (timm, torchvision, Hugging Face); "
                     f"keys start {', '.join(list(sd)[:4])}")


def _from_state_dict(sd: dict[str, torch.Tensor], path: Path) -> _Source:
    fmt = _detect(sd, path)
    if fmt in ("timm", "vitkit"):
        return _Source(fmt, from_timm(sd), detail="state dict",
                       known=dict(layer_norm_eps=1e-6, gelu="exact"))
    if fmt == "torchvision":
        unknown: list[str] = []
        out = from_torchvision(sd, unknown)
        data = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return _Source(fmt, out, detail="state dict", unknown=unknown, extra={"data": data},
                       known=dict(layer_norm_eps=1e-6, gelu="exact"))
    unknown = []
    out = from_hf(sd, unknown)
    return _Source("hf", out, detail="state dict without config.json: eps 1e-12, exact GELU assumed",
                   unknown=unknown, known=dict(layer_norm_eps=1e-12, gelu="exact"))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _read_hf_dir(directory: Path, cfg: dict) -> _Source:
    cfg_path = directory / CONFIG_NAME
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
    src = _Source("hf", sd, detail=f"{weights.name}, hidden_act {act}", known=known, unknown=unknown)
    if "pre_logits.dense.weight" in sd:
        if "head.weight" in sd:  # ViTForImageClassification classifies the class token, not the pooler
            for k in ("pre_logits.dense.weight", "pre_logits.dense.bias"):
                sd.pop(k, None)
            src.dropped.append("pooler.dense (ViTForImageClassification does not use it)")
        elif cfg.get("pooler_act", "tanh") != "tanh":
            raise ValueError(f"{cfg_path}: pooler_act {cfg['pooler_act']!r}; vitkit's pre-logits are tanh")
    labels = cfg.get("id2label") or {}
    n = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    if n and len(labels) == n:
        names = [labels.get(str(i), labels.get(i)) for i in range(n)]
        if all(names) and names != [f"LABEL_{i}" for i in range(n)]:
            src.extra["classes"] = names
    pre = directory / "preprocessor_config.json"
    if pre.is_file():
        p = _read_json(pre)
        if "image_mean" in p and "image_std" in p:
            src.extra["data"] = dict(mean=list(p["image_mean"]), std=list(p["image_std"]))
    return src


def _read_vitkit_dir(directory: Path, meta: dict) -> _Source:
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such file")
    try:
        config = ViTConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{directory / CONFIG_NAME}: bad model config ({e})") from None
    extra = {k: v for k, v in meta.items() if k != "model"}
    return _Source("vitkit", read_state_dict(weights), detail="config.json + model.safetensors",
                   config=config, extra=extra)


def _read_npz(path: Path) -> _Source:
    sd, facts, unknown = from_npz(read_npz(path))
    detail = f"{facts['naming']} naming"
    if facts["prefix"]:
        detail += f", under {facts['prefix']}"
    if facts["scanned"]:
        detail += ", scanned blocks"
    known = dict(gelu="tanh", layer_norm_eps=1e-6)
    if facts["num_heads"]:
        known["num_heads"] = int(facts["num_heads"])
    src = _Source("npz", sd, detail=detail, known=known, unknown=unknown,
                  extra={"data": dict(mean=[0.5] * 3, std=[0.5] * 3)})
    if facts["ignored"]:
        src.notes.append(f"{len(facts['ignored'])} arrays outside {facts['prefix']} ignored "
                         f"(optimizer state): {', '.join(facts['ignored'][:3])}")
    src.notes.append("GELU: tanh approximation, as the official JAX code computes it")
    return src


def read_checkpoint(path: str | Path) -> _Source:
    """Read any supported checkpoint into vitkit-named tensors plus what the files say."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file() and path.name in (WEIGHTS_NAME, *HF_WEIGHTS) and (path.parent / CONFIG_NAME).is_file():
        path = path.parent  # the weights of a model directory: its config.json belongs with them
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        if cfg_path.is_file():
            meta = _read_json(cfg_path)
            if isinstance(meta.get("model"), dict):
                return _read_vitkit_dir(path, meta)
            if "model_type" in meta or "architectures" in meta:
                return _read_hf_dir(path, meta)
            raise ValueError(f"{cfg_path}: neither a vitkit nor a Hugging Face config")
        weights = next((path / n for n in (WEIGHTS_NAME, *HF_WEIGHTS) if (path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path}: no config.json, model.safetensors or pytorch_model.bin")
        path = weights
    if _sniff(path) == "npz":
        return _read_npz(path)
    return _from_state_dict(read_state_dict(path), path)


# ---- inferring the architecture ------------------------------------------------------------
def _grid_for(count: int, patch: int, sizes: list) -> tuple[int, int] | None:
    """The patch grid holding `count` positions: one of the given image sizes, else a square."""
    for s in sizes:
        if s is None:
            continue
        h, w = (s, s) if isinstance(s, int) else s
        if h % patch == 0 and w % patch == 0 and (h // patch) * (w // patch) == count:
            return h // patch, w // patch
    side = int(round(count**0.5))
    return (side, side) if side * side == count else None


def _is_square(n: int) -> bool:
    return n > 0 and int(round(n**0.5)) ** 2 == n


def variant_name(config: ViTConfig) -> str | None:
    """'B/16' and the like when the config is a named variant's architecture."""
    shape = (config.hidden_size, config.num_layers, config.mlp_size, config.num_heads)
    name = next((n for n, v in VARIANTS.items() if v == shape), None)
    return f"{name}/{config.patch_size}" if name else None


def infer_config(sd: dict[str, torch.Tensor], known: dict | None = None,
                 image_size: int | tuple[int, int] | None = None) -> tuple[ViTConfig, list[str]]:
    """The ViTConfig a vitkit-named state dict was made for, and notes on what was assumed.

    `known` holds fields the checkpoint's own files state (they win); `image_size` helps to
    read a non-square position table. Heads cannot be read from fused qkv weights: they
    come from `known`, else from the named variant of the same width.
    """
    known = dict(known or {})
    notes: list[str] = []
    w = sd.get("patch_embed.proj.weight")
    if w is None or w.ndim != 4 or w.shape[-1] != w.shape[-2]:
        raise ValueError("no square patch embedding patch_embed.proj.weight (D, C, P, P)")
    f: dict[str, Any] = dict(hidden_size=w.shape[0], num_channels=w.shape[1], patch_size=w.shape[-1])
    stem_key = re.compile(r"patch_embed\.stem\.layers\.\d+\.weight")
    stem = [v for k, v in sd.items() if stem_key.fullmatch(k) and v.ndim == 4]
    if stem:  # the stride whose stem plan gives these conv widths
        widths = [c.shape[0] for c in stem]
        strides = [2**k for k in range(len(stem))]
        stride = next((s for s in strides if widths == [c for c, _ in conv_stem_plan(widths[-1], s)]), None)
        if stride is None:
            raise ValueError(f"conv stem widths {widths} match no stem stride")
        f.update(stem="conv", stem_channels=widths[-1], num_channels=stem[0].shape[1],
                 stem_stride=stride, patch_size=w.shape[-1] * stride)
    layers = sorted({int(k.split(".")[1]) for k in sd if re.match(r"^blocks\.\d+\.", k)})
    if layers != list(range(len(layers))):
        gap = next(i for i in range(len(layers) + 1) if i not in layers)
        raise ValueError(f"encoder blocks are not numbered 0..{layers[-1]}: blocks.{gap} is missing")
    f["num_layers"] = len(layers)
    if layers:
        fc1 = sd.get("blocks.0.mlp.fc1.weight")
        if fc1 is None:
            raise ValueError("no blocks.0.mlp.fc1.weight to read the MLP size from")
        f["mlp_size"] = fc1.shape[0]
        f["qkv_bias"] = "blocks.0.attn.qkv.bias" in sd
    f["class_token"] = "cls_token" in sd
    f["pool"] = "cls" if f["class_token"] else "mean"
    f["num_classes"] = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    if "pre_logits.dense.weight" in sd:
        f["representation_size"] = sd["pre_logits.dense.weight"].shape[0]
    if "num_heads" not in known:
        heads = _HEADS_BY_WIDTH.get(f["hidden_size"])
        if heads is None:
            raise ValueError(f"cannot infer num_heads for width {f['hidden_size']} (the file does not "
                             "record it): pass num_heads")
        known["num_heads"] = heads
        notes.append(f"num_heads {heads} assumed from width {f['hidden_size']}; pass num_heads if it differs")
    p = f["patch_size"]
    if "pos_embed" in sd:
        count = sd["pos_embed"].shape[1] - (1 if f["class_token"] else 0)
        grid = _grid_for(count, p, [known.get("image_size"), image_size])
        if grid is None:
            raise ValueError(f"cannot tell the patch grid of {count} position embeddings: not a square; "
                             "pass the checkpoint's image_size")
        f["image_size"] = grid[0] * p if grid[0] == grid[1] else (grid[0] * p, grid[1] * p)
        known.pop("image_size", None)
    else:
        f["pos_embed"] = "none"
        f["image_size"] = known.pop("image_size", None) or image_size or 224
        notes.append("no position embeddings in the file (pos_embed='none'; pass pos_embed='sincos2d' "
                     "for fixed ones)")
    f.update(known)
    return ViTConfig(**f), notes


def _add_class_row(sd: dict[str, torch.Tensor]) -> str | None:
    """A position table without the class token's row (timm no_embed_class, big_vision) gets a zero
    row: vitkit adds that row to the class token, so zero leaves the model unchanged."""
    pos = sd.get("pos_embed")
    if pos is None or "cls_token" not in sd:
        return None
    n = pos.shape[1]
    if _is_square(n) and not _is_square(n - 1):
        sd["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
        return "position table had no class-token row; a zero row was added (same outputs)"
    return None


# ---- loading -------------------------------------------------------------------------------
def _load_fitting(model: ViT, sd: dict[str, torch.Tensor], report: LoadReport) -> None:
    """Non-strict load: copy every tensor whose name and shape fit; list the rest."""
    own = model.state_dict()
    fit = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    report.mismatched += [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                          for k, v in sd.items() if k in own and v.shape != own[k].shape]
    report.missing += sorted(k for k in own if k not in sd)
    report.unexpected += sorted(k for k in sd if k not in own)
    model.load_state_dict(fit, strict=False)


def load_with_report(
    path: str | Path,
    *,
    image_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    resize_mode: ResizeMode = "bicubic",
    strict: bool = True,
    keep_pre_logits: bool = False,
    drop_zero_head: bool = True,
    **overrides: Any,
) -> tuple[ViT, LoadReport]:
    """Load a ViT checkpoint of any supported format; see `load`. Returns the model (in eval
    mode) and the report of what was found and done."""
    path = Path(path)
    try:
        return _load(path, image_size, num_classes, resize_mode, strict, keep_pre_logits, drop_zero_head,
                     overrides)
    except ValueError as e:  # every error names the file it is about
        raise ValueError(e if str(e).startswith(str(path)) else f"{path}: {e}") from None


def _load(path: Path, image_size: int | tuple[int, int] | None, num_classes: int | None,
          resize_mode: ResizeMode, strict: bool, keep_pre_logits: bool, drop_zero_head: bool,
          overrides: dict) -> tuple[ViT, LoadReport]:
    bad = sorted(set(overrides) - _CONFIG_FIELDS)
    if bad:
        raise ValueError(f"unknown load option(s): {', '.join(bad)}")
    src = read_checkpoint(path)
    report = LoadReport(str(path), src.format, src.detail, dropped=list(src.dropped),
                        notes=list(src.notes), extra=dict(src.extra))
    if src.unknown:
        if strict:
            raise ValueError(f"unexpected keys for a {src.format} ViT: {', '.join(src.unknown[:6])}"
                             + (" ..." if len(src.unknown) > 6 else ""))
        report.unexpected += src.unknown
    sd = src.sd
    if src.config is not None:
        config = src.config
    else:
        note = _add_class_row(sd)
        if note:
            report.notes.append(note)
        config, notes = infer_config(sd, {**src.known, **overrides}, image_size)
        report.notes += notes
    config = config.replace(**overrides)
    head = sd.get("head.weight")
    if src.format == "npz" and drop_zero_head and head is not None and not head.any() \
            and not sd.get("head.bias", head).any():
        sd.pop("head.weight")
        sd.pop("head.bias", None)
        report.dropped.append(f"head ({head.shape[0]} classes): all zeros, as in the original "
                              "ImageNet-21k files; the model outputs its features")
        config = config.replace(num_classes=0)
    if image_size is not None:
        target = config.replace(image_size=image_size)
        if target.grid_size != config.grid_size and config.pos_embed == "learn" and "pos_embed" in sd:
            old, new = config.grid_size, target.grid_size
            sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], new, old, config.num_prefix_tokens,
                                                 mode=resize_mode)
            report.resized.append(f"pos_embed grid {old[0]}x{old[1]} -> {new[0]}x{new[1]} ({resize_mode}; "
                                  "class-token row kept)")
        config = target
    model = ViT(config)
    if strict:
        load_state_dict_checked(model, sd, source=str(path))
    else:
        _load_fitting(model, sd, report)
    if num_classes is not None and num_classes != config.num_classes:
        if config.representation_size and not keep_pre_logits:
            model.drop_pre_logits()
            report.dropped.append(f"pre_logits ({config.representation_size} wide): the whole pre-training "
                                  "head is replaced, as in the paper's fine-tuning")
        old = f"{config.num_classes}-class head" if config.num_classes else "no head"
        model.reset_classifier(num_classes)
        report.notes.append(f"{old} replaced by a zero-initialized {num_classes}-class head")
        report.extra.pop("classes", None)
    elif head is not None and "head.weight" in sd and not head.any():
        report.notes.append("the head is all zeros")
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values() if v.is_floating_point()}
                    - {"float32"})
    if dtypes:
        report.notes.append(f"weights stored as {', '.join(dtypes)}, loaded as float32")
    report.config = model.config
    report.variant = variant_name(model.config)
    return model.eval(), report


def load(
    path: str | Path,
    *,
    image_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    resize_mode: ResizeMode = "bicubic",
    strict: bool = True,
    keep_pre_logits: bool = False,
    drop_zero_head: bool = True,
    verbose: bool = False,
    **overrides: Any,
) -> ViT:
    """Load a ViT from an official .npz, a timm / torchvision / Hugging Face checkpoint or a
    vitkit model directory, inferring the architecture from the tensors.

    Args:
        path: a file (.npz, .pth/.pt/.bin, .safetensors) or a directory (vitkit or Hugging Face).
        image_size: build the model for this input size; learned position embeddings are
            2D-interpolated to the new patch grid (paper Section 3.2).
        num_classes: when it differs from the checkpoint's, the head is replaced by a
            zero-initialized one (and the pre-logits layer dropped unless keep_pre_logits).
        resize_mode: "bicubic", "bilinear", or "jax" (the official code's scipy zoom, order 1).
        strict: refuse missing, unexpected or mis-shaped keys; False loads what fits and
            lists the rest in the report.
        keep_pre_logits: keep the tanh pre-logits layer when a new head is requested.
        drop_zero_head: drop an all-zero head of an .npz file (ImageNet-21k releases).
        verbose: print the load report.
        overrides: ViTConfig fields the files cannot tell (num_heads, pool) or training
            settings (dropout, drop_path).
    """
    model, report = load_with_report(
        path, image_size=image_size, num_classes=num_classes, resize_mode=resize_mode, strict=strict,
        keep_pre_logits=keep_pre_logits, drop_zero_head=drop_zero_head, **overrides)
    if verbose:
        print(report)
    return model


# ---- writing -------------------------------------------------------------------------------
def _export_state_dict(model: ViT, notes: list[str]) -> dict[str, torch.Tensor]:
    """Weights to write; fixed sin-cos position embeddings become an explicit table, which is
    how every other format can hold them."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.pos_embed == "sincos2d":
        sd["pos_embed"] = model.pos_embed.detach().cpu().clone()
        notes.append("fixed sin-cos position embeddings written as a table")
    return sd


def _check_plain(config: ViTConfig, fmt: str, notes: list[str]) -> None:
    if config.stem != "patch":
        raise ValueError(f"{fmt} has no convolutional stem (stem='conv')")
    if config.layer_norm_eps != 1e-6:  # e.g. Hugging Face's 1e-12: a tiny difference, worth knowing
        notes.append(f"{fmt} files imply LayerNorm eps 1e-6; this model uses {config.layer_norm_eps:g}")


def export(model: ViT, out: str | Path, to: str = "vitkit", naming: str = "vit_jax",
           extra: dict | None = None) -> tuple[Path, list[str]]:
    """Write a model as vitkit, timm, Hugging Face or official .npz files; returns the path
    written and notes on what a reader of that format should know."""
    out = Path(out)
    cfg = model.config
    notes: list[str] = []
    if to == "vitkit":
        return save_pretrained(model, out, extra=extra), notes
    if to not in EXPORT_FORMATS:
        raise ValueError(f"unknown output format {to!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    sd = _export_state_dict(model, notes)
    if to == "timm":
        _check_plain(cfg, "timm", notes)
        sd = to_timm(sd)
        if cfg.gelu == "tanh":
            notes.append("the model uses the tanh GELU: build timm's model with that act_layer")
        if cfg.pool == "mean":
            notes.append("build timm's model with global_pool='avg', fc_norm=False")
        if out.suffix == ".safetensors":
            atomic_write_bytes(out, safetensors_bytes(sd, metadata={"format": "pt"}))
        else:
            atomic_torch_save(out, sd)
        return out, notes
    if to == "npz":
        _check_plain(cfg, "official .npz", notes)
        if cfg.class_token and cfg.pool == "mean":
            raise ValueError("the official format pools by class token when it has one; "
                             "this model averages patch tokens although it has a class token")
        if cfg.gelu == "exact":
            notes.append("the official JAX code applies the tanh GELU; this model used the exact one")
        arrays = to_npz(sd, cfg.num_heads, naming)
        atomic_write(out, lambda f: np.savez(f, **arrays))
        return out, notes
    # Hugging Face: ViTForImageClassification, or ViTModel (with its pooler) when headless
    rep = cfg.representation_size
    if rep and cfg.num_classes:
        raise ValueError("Hugging Face's ViTForImageClassification has no pre-logits layer: drop it "
                         "(load with num_classes and without keep_pre_logits) or export to npz")
    hf = config_to_hf(cfg.replace(pos_embed="learn"))
    if cfg.num_classes:
        arch, prefix = "ViTForImageClassification", "vit."
        classes = (extra or {}).get("classes")
        if classes and len(classes) == cfg.num_classes:
            hf["id2label"] = {str(i): c for i, c in enumerate(classes)}
            hf["label2id"] = {c: i for i, c in enumerate(classes)}
    else:
        arch, prefix = "ViTModel", ""
        hf.pop("num_labels")
        if not rep:
            notes.append("no pooler weights: ViTModel initializes its pooler randomly")
    hf_sd = to_hf(sd, prefix=prefix)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "model.safetensors", safetensors_bytes(hf_sd, metadata={"format": "pt"}))
    atomic_write_json(out / CONFIG_NAME, {"architectures": [arch], "model_type": "vit", **hf})
    return out, notes


def _extra_for(model: ViT, report: LoadReport) -> dict:
    """What vitkit's config.json stores beside the model: input preparation, class names."""
    extra = dict(report.extra)
    data = dict(extra.get("data") or {})
    if "mean" in data and "std" in data:
        cfg = model.config
        if len(data["mean"]) != cfg.num_channels:
            extra.pop("data")
        else:
            extra["data"] = {**data, "image_size": list(cfg.image_hw), "channels": cfg.num_channels}
    return extra


def convert(src: str | Path, out: str | Path, to: str = "vitkit", naming: str = "vit_jax",
            **load_options: Any) -> tuple[Path, LoadReport]:
    """Load any supported checkpoint (options as for `load`) and write it as `to`."""
    if to not in EXPORT_FORMATS:
        raise ValueError(f"unknown output format {to!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    model, report = load_with_report(src, **load_options)
    path, notes = export(model, out, to=to, naming=naming, extra=_extra_for(model, report))
    report.notes += notes
    return path, report
