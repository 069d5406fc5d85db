"""Writing a ViT out as vitkit, timm, Hugging Face or official .npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import save_pretrained
from ..config import ViTConfig
from ..files import atomic_save_tensors, atomic_torch_save, atomic_write
from .hf import write_hf_folder
from .npz import to_npz
from .timm import to_timm

EXPORT_FORMATS = ("vitkit", "timm", "hf", "npz")


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
    if config.layer_norm_eps != 1e-6:  # e.g. Hugging Face's 1e-12: a tiny difference, worth knowing
        notes.append(f"{fmt} files imply LayerNorm eps 1e-6; this model uses {config.layer_norm_eps:g}")


def write_model(model: torch.nn.Module, out: str | Path, to: str = "vitkit", naming: str = "vit_jax",
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
    return write_hf_folder(sd, cfg, out, (extra or {}).get("classes"), notes), notes
