"""Size and cost of the named variants, computed from the models themselves, and what a given
model is and how its inputs will be prepared."""

from __future__ import annotations

import torch

from .config import PAPER_PARAMS_M, VARIANTS, ViTConfig, variant
from .model import ViT, conv_stem_plan
from .opened import OpenedModel


def forward_macs(config: ViTConfig) -> int:
    """Multiply-accumulates of one forward pass on one image, counted analytically.

    Counts the matrix products (patch projection, qkv, QK^T, attention x V, output
    projection, MLP, pre-logits, head); norms, softmax and GELU are left out, as FLOP
    counters do. A FLOP count is twice this.
    """
    d, m, n = config.hidden_size, config.mlp_size, config.num_patches
    t = n + config.num_prefix_tokens
    macs = n * config.num_channels * config.patch_size**2 * d
    if config.stem == "conv":
        h, w = config.image_hw
        c, s = config.stem_channels, config.stem_stride
        c_in, scale = config.num_channels, 1
        for c_out, stride in conv_stem_plan(c, s):
            scale *= stride
            macs += (h // scale) * (w // scale) * 9 * c_in * c_out
            c_in = c_out
        macs += n * c * (config.patch_size // s) ** 2 * d - n * config.num_channels * config.patch_size**2 * d
    per_block = t * d * 3 * d + 2 * t * t * d + t * d * d + 2 * t * d * m
    macs += config.num_layers * per_block
    head_in = d
    if config.representation_size:
        macs += d * config.representation_size
        head_in = config.representation_size
    return macs + head_in * config.num_classes


def variant_rows(image_size: int = 224, patch_sizes: dict[str, int] | None = None) -> list[dict]:
    """One row per variant: layers, D, MLP, heads, parameters and GFLOPs at image_size, or at the
    nearest size its patch divides (H/14 at 384 is counted at 378)."""
    patch_sizes = patch_sizes or {"Ti": 16, "S": 16, "B": 16, "L": 16, "H": 14}
    rows = []
    for size in VARIANTS:
        name, p = f"{size}/{patch_sizes[size]}", patch_sizes[size]
        side = image_size if image_size % p == 0 else max(p, round(image_size / p) * p)
        cfg = variant(name, image_size=side)
        with torch.device("meta"):  # shapes only: no memory, no init time
            params = ViT(cfg).num_params()
        rows.append(dict(
            variant=name, layers=cfg.num_layers, hidden_size=cfg.hidden_size,
            mlp_size=cfg.mlp_size, heads=cfg.num_heads, params=params,
            paper_params_m=PAPER_PARAMS_M.get(size), gflops=2 * forward_macs(cfg) / 1e9, image_size=side,
        ))
    return rows


def format_table(rows: list[dict], image_size: int = 224) -> str:
    head = ("| variant | layers | D | MLP | heads | params | paper (Table 1) "
            f"| GFLOPs @{image_size} |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        paper = f"{r['paper_params_m']}M" if r["paper_params_m"] else "-"
        lines.append(
            f"| {r['variant']} | {r['layers']} | {r['hidden_size']} | {r['mlp_size']} "
            f"| {r['heads']} | {r['params']:,} | {paper} | {r['gflops']:.1f}"
            + (f" (at {r['image_size']})" if r.get("image_size", image_size) != image_size else "") + " |"
        )
    return "\n".join(lines)


def describe(opened: OpenedModel) -> dict:
    """What `vitkit info MODEL` shows of an opened model: its
    architecture and size, and the input spec it will be fed with where that spec came from,
    so a wrong normalization is seen before predictions are trusted."""
    report = opened.report
    cfg = report.config if getattr(report, "config", None) is not None else opened.model.config
    with torch.device("meta"):  # counted from the config: also for ONNX files
        params = ViT(cfg).num_params()
    return dict(
        source=opened.source, format=report.format, detail=report.detail, variant=report.variant,
        layers=cfg.num_layers, hidden_size=cfg.hidden_size, mlp_size=cfg.mlp_size, heads=cfg.num_heads,
        patch_size=cfg.patch_size, image_size=list(cfg.image_hw), num_classes=cfg.num_classes, params=params,
        gflops=2 * forward_macs(cfg) / 1e9,
        input={**opened.spec.to_dict(), "source": opened.spec_source}, notes=list(report.notes),
    )


def format_model(d: dict) -> str:
    """`describe`'s dict as a few lines of text."""
    h, w = d["image_size"]
    s = d["input"]
    ih, iw = s["image_size"]
    mode = {1: "grayscale", 3: "RGB"}.get(s["channels"], f"{s['channels']} channels")
    lines = [f"{d['source']}: {d['format']}" + (f" ({d['detail']})" if d["detail"] else ""),
             f"  model: {d['variant'] or 'ViT'}: {d['layers']} layers, width {d['hidden_size']}, MLP "
             f"{d['mlp_size']}, {d['heads']} heads, patch {d['patch_size']}, image {h}x{w}, "
             f"{d['num_classes']} classes, {d['params']:,} parameters, {d['gflops']:.3g} GFLOPs",
             f"  input: {ih}x{iw}, {mode}, mean {s['mean']}, "
             f"std {s['std']}, crop_pct {s['crop_pct']:g}, {s['interpolation']}",
             f"  input from: {s['source']}"]
    lines += [f"  note: {n}" for n in d["notes"]]
    return "\n".join(lines)
