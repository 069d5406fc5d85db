"""Checkpoints from anywhere, read into a ViT of the class the caller names.

``read_checkpoint`` finds the format of a file or folder and hands it to the reader in
formats/ that knows it; ``infer_config`` reads the architecture from the tensors themselves
(width, depth, patch, grid, classes, pre-logits, pooling, conv stem); ``load_checkpoint``
builds the model, optionally resizing the position embeddings (paper Section 3.2) and
replacing the head, and records all of it in a LoadReport. This module never imports the
model: the model class is an argument, so ``ViT.from_pretrained`` can use it without a cycle.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_state_dict_checked, read_meta, read_weights
from ..config import VARIANTS, ViTConfig, conv_stem_plan, patch_problem, variant_name
from ..files import read_json
from ..posemb import ResizeMode, resample_pos_embed
from ..sizes import hw
from .common import IMAGENET_MEAN, IMAGENET_STD, Source, read_state_dict, sniff
from .hf import HF_WEIGHTS, from_hf, read_hf_folder
from .npz import read_npz_source
from .timm import from_timm, read_timm_folder
from .torchvision import from_torchvision

# Width -> heads of the named variants: timm and torchvision state dicts do not record heads.
_HEADS_BY_WIDTH = {hidden: heads for hidden, _, _, heads in VARIANTS.values()}
CONFIG_FIELDS = {f.name for f in dataclasses.fields(ViTConfig)}


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


def _from_state_dict(sd: dict[str, torch.Tensor], path: Path) -> Source:
    fmt = _detect(sd, path)
    if fmt in ("timm", "vitkit"):
        return Source(fmt, from_timm(sd), detail="state dict",
                       known=dict(layer_norm_eps=1e-6, gelu="exact"))
    if fmt == "torchvision":
        unknown: list[str] = []
        out = from_torchvision(sd, unknown)
        data = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return Source(fmt, out, detail="state dict", unknown=unknown, extra={"data": data},
                       known=dict(layer_norm_eps=1e-6, gelu="exact"))
    unknown = []
    out = from_hf(sd, unknown)
    return Source("hf", out, detail="state dict without config.json: eps 1e-12, exact GELU assumed",
                   unknown=unknown, known=dict(layer_norm_eps=1e-12, gelu="exact"))


def _read_vitkit_folder(directory: Path) -> Source:
    meta = read_meta(directory)
    extra = {k: v for k, v in meta.items() if k != "model"}
    return Source("vitkit", read_weights(directory), detail="config.json + model.safetensors",
                  config=ViTConfig.from_dict(meta["model"]), extra=extra)


def read_checkpoint(path: str | Path) -> Source:
    """Read any supported checkpoint into vitkit-named tensors plus what the files say."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file() and path.name in (WEIGHTS_NAME, *HF_WEIGHTS) and (path.parent / CONFIG_NAME).is_file():
        path = path.parent  # the weights of a model folder: its config.json belongs with them
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        if cfg_path.is_file():
            meta = read_json(cfg_path)
            if not isinstance(meta, dict):
                raise ValueError(f"{cfg_path}: not a JSON object")
            if isinstance(meta.get("model"), dict):
                return _read_vitkit_folder(path)
            if "model_type" in meta or "architectures" in meta:
                return read_hf_folder(path, meta)
            if "architecture" in meta or "pretrained_cfg" in meta:
                return read_timm_folder(path, meta)
            raise ValueError(f"{cfg_path}: neither a vitkit, a Hugging Face nor a timm config")
        weights = next((path / n for n in (WEIGHTS_NAME, *HF_WEIGHTS) if (path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path}: no config.json, model.safetensors or pytorch_model.bin")
        path = weights
    if sniff(path) == "npz":
        return read_npz_source(path)
    return _from_state_dict(read_state_dict(path), path)


# ---- inferring the architecture ------------------------------------------------------------
def _grid_for(count: int, patch: int, sizes: list) -> tuple[int, int] | None:
    """The patch grid holding `count` positions: one of the given image sizes, else a square."""
    for s in sizes:
        if s is None:
            continue
        h, w = hw(s)
        if not patch_problem((h, w), patch) and (h // patch) * (w // patch) == count:
            return h // patch, w // patch
    side = int(round(count**0.5))
    return (side, side) if side * side == count else None


def _is_square(n: int) -> bool:
    return n > 0 and int(round(n**0.5)) ** 2 == n


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
    if "dist_token" in sd:
        f["distill_token"] = True
    if "reg_token" in sd:
        f["register_tokens"] = sd["reg_token"].shape[1]
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
        prefix = int(f["class_token"]) + int(f.get("distill_token", False)) + f.get("register_tokens", 0)
        count = sd["pos_embed"].shape[1] - prefix
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
    """A position table without rows for the class token and registers (timm no_embed_class,
    big_vision) gets zero rows: vitkit adds those rows to the prefix tokens, so zeros leave
    the model unchanged."""
    pos = sd.get("pos_embed")
    prefix = (int("cls_token" in sd) + int("dist_token" in sd)
              + (sd["reg_token"].shape[1] if "reg_token" in sd else 0))
    if pos is None or not prefix:
        return None
    n = pos.shape[1]
    if _is_square(n) and not _is_square(n - prefix):
        sd["pos_embed"] = torch.cat([pos.new_zeros(1, prefix, pos.shape[2]), pos], dim=1)
        return (f"position table had no rows for the {prefix} prefix token(s); zero rows were added "
                "(same outputs)")
    return None


# ---- loading -------------------------------------------------------------------------------
def _load_fitting(model: torch.nn.Module, sd: dict[str, torch.Tensor], report: LoadReport) -> None:
    """Non-strict load: copy every tensor whose name and shape fit; list the rest."""
    own = model.state_dict()
    fit = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    report.mismatched += [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                          for k, v in sd.items() if k in own and v.shape != own[k].shape]
    report.missing += sorted(k for k in own if k not in sd)
    report.unexpected += sorted(k for k in sd if k not in own)
    model.load_state_dict(fit, strict=False)


def load_checkpoint(
    model_class: type,
    path: str | Path,
    *,
    image_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    resize_mode: ResizeMode = "bicubic",
    strict: bool = True,
    keep_pre_logits: bool = False,
    drop_zero_head: bool = True,
    **overrides: Any,
) -> tuple[Any, LoadReport]:
    """Build `model_class` (vitkit.ViT or a subclass) from a checkpoint of any supported format;
    see vitkit.loading.load. Returns the model (in eval mode) and the report of what was found
    and done."""
    path = Path(path)
    try:
        return _load(model_class, path, image_size, num_classes, resize_mode, strict, keep_pre_logits,
                     drop_zero_head, overrides)
    except ValueError as e:  # every error names the file it is about
        raise ValueError(e if str(e).startswith(str(path)) else f"{path}: {e}") from None


def _load(model_class: type, path: Path, image_size: int | tuple[int, int] | None, num_classes: int | None,
          resize_mode: ResizeMode, strict: bool, keep_pre_logits: bool, drop_zero_head: bool,
          overrides: dict) -> tuple[Any, LoadReport]:
    bad = sorted(set(overrides) - CONFIG_FIELDS)
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
    model = model_class(config)
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


