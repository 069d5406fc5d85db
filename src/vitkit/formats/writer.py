"""Writing a ViT out as vitkit, timm, Hugging Face or official .npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import save_pretrained
from ..config import ViTConfig
from ..data.preprocess import InputSpec
from ..files import atomic_save_tensors, atomic_torch_save, atomic_write, atomic_write_json
from ..multilabel import threshold_of
from .hf import write_hf_folder
from .npz import to_npz
from .timm import timm_folder_config, to_timm

EXPORT_FORMATS = ("vitkit", "timm", "hf", "npz")
TIMM_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")  # other names: a timm model folder


def writes_folder(to: str, out: str | Path) -> bool:
    """Whether `write_model(..., out, to)` writes a folder (else one file)."""
    return to in ("vitkit", "hf") or (to == "timm" and Path(out).suffix.lower() not in TIMM_FILE_SUFFIXES)


def _export_state_dict(model: torch.nn.Module, notes: list[str]) -> dict[str, torch.Tensor]:
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
    if config.distill_token:
        raise ValueError(f"{fmt}'s ViT has no distillation token (distill_token=True): keep the vitkit "
                         "format, or export to ONNX")
    if config.layer_norm_eps != 1e-6:  # e.g. Hugging Face's 1e-12: a tiny difference, worth knowing
        notes.append(f"{fmt} files imply LayerNorm eps 1e-6; this model uses {config.layer_norm_eps:g}")


def write_model(model: torch.nn.Module, out: str | Path, to: str = "vitkit", naming: str = "vit_jax",
                extra: dict | None = None) -> tuple[Path, list[str]]:
    """Write a model as vitkit, timm, Hugging Face or official .npz files; returns the path
    written and notes on what a reader of that format should know.

    timm: a bare state dict when `out` ends in .pth/.pt/.bin/.safetensors, else a folder
    timm.create_model("local-dir:OUT", pretrained=True) opens. hf: a folder with
    preprocessor_config.json, so transformers.pipeline("image-classification", OUT) works."""
    out = Path(out)
    cfg = model.config
    notes: list[str] = []
    if to == "vitkit":
        return save_pretrained(model, out, extra=extra), notes
    if to not in EXPORT_FORMATS:
        raise ValueError(f"unknown output format {to!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    sd = _export_state_dict(model, notes)
    extra = extra or {}
    if to == "timm":
        _check_plain(cfg, "timm", notes)
        sd = to_timm(sd)
        if out.suffix.lower() not in TIMM_FILE_SUFFIXES:  # a folder timm opens as "local-dir:OUT"
            config = timm_folder_config(cfg, _spec(cfg, extra), extra.get("classes"), "pos_embed" in sd)
            _check_folder(out, "timm")
            out.mkdir(parents=True, exist_ok=True)
            atomic_save_tensors(out / "model.safetensors", sd)
            atomic_write_json(out / "config.json", config)
            return out, notes
        if cfg.gelu == "tanh":
            notes.append("the model uses the tanh GELU: build timm's model with that act_layer")
        if cfg.pool == "mean":
            notes.append("build timm's model with global_pool='avg', fc_norm=False")
        if out.suffix.lower() == ".safetensors":
            atomic_save_tensors(out, sd)
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
    _check_folder(out, "hf")
    threshold = threshold_of(extra) if cfg.num_classes else None
    return write_hf_folder(sd, cfg, out, extra.get("classes"), notes, _spec(cfg, extra), threshold), notes


def _check_folder(out: Path, fmt: str) -> None:
    if out.exists() and not out.is_dir():
        hint = " (or name a .pth / .safetensors file for a bare state dict)" if fmt == "timm" else ""
        raise ValueError(f"{out}: exists and is not a folder; --to {fmt} writes a model folder{hint}")


def _spec(config: ViTConfig, extra: dict) -> InputSpec:
    """How the model's inputs are prepared: as stored beside it, else vitkit's defaults."""
    stored = {k: v for k, v in (extra.get("data") or {}).items() if k != "image_size"}
    return InputSpec.for_model(config.image_hw, config.num_channels, stored)[0]
