"""The paper's figures drawn with matplotlib, written as PNG files.

Figures are drawn on vitkit.canvas (laid out in pixels, written atomically), so every file
has a known size: each function returns the path and the (width, height) it was drawn at.
The training curves are the trainer's own figure (vitkit.training.curves), named here too.
"""

from __future__ import annotations

import io
import math
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps

from ..canvas import DPI, HEAT, Canvas, Size
from ..config import patch_problem
from ..training.curves import curves_size as curves_size  # the trainer draws them: named here too
from ..training.curves import plot_curves as plot_curves
from .analysis import upsample

TITLE_LINE = 18  # pixels per line of an 11 pt title


def _wrap(title: str, width_px: int) -> tuple[str, int]:
    """Wrap a title to the figure width (about 8 px per character at 11 pt): text, line count."""
    lines = textwrap.wrap(title, max(20, width_px // 8)) or [""]
    return "\n".join(lines), len(lines)


def display_image(image: np.ndarray, min_side: int = 96) -> np.ndarray:
    """A (C, H, W) uint8 image as a float (H', W'[, 3]) array in [0, 1] for imshow.

    Tiny images (8x8 digits) are enlarged by an integer factor with nearest-neighbour
    sampling, so their pixels stay sharp and overlays have room to be smooth.
    """
    img = np.asarray(image, dtype=np.float32) / 255.0
    img = img[0] if img.shape[0] == 1 else np.moveaxis(img[:3], 0, -1)
    scale = max(1, math.ceil(min_side / min(img.shape[:2])))
    if scale > 1:
        img = img.repeat(scale, axis=0).repeat(scale, axis=1)
    return img


def _show(ax, img: np.ndarray) -> None:
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _normalized(m: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] by its maximum, so each panel shows its own pattern."""
    m = np.asarray(m, dtype=np.float64)
    return m / m.max() if m.max() > 0 else m


def _overlay(ax, img: np.ndarray, attn: np.ndarray, alpha: float = 0.6) -> None:
    _show(ax, img)
    heat = _normalized(upsample(attn, img.shape[:2]))
    ax.imshow(heat, cmap=HEAT, vmin=0, vmax=1, alpha=alpha, interpolation="bilinear")


def plot_patches(image: np.ndarray, patch_size: int, path: str | Path, title: str, side: int = 360
                 ) -> tuple[Path, Size]:
    """A (C, H, W) uint8 image cut into non-overlapping patch_size x patch_size patches, as
    in the paper's Figure 1: the image with the patch grid drawn on it, then the patches
    pulled apart. Patches are numbered in the order they enter the sequence (row-major):
    every patch when there is room, otherwise the first patch of each row.

    Pixels are enlarged by an integer factor so that the patch grid spans about `side`
    pixels and every pixel stays sharp.
    """
    p = int(patch_size)
    h, w = image.shape[-2:]
    problem = patch_problem((h, w), p)
    if problem:
        raise ValueError(problem)
    gh, gw = h // p, w // p
    img = display_image(image)
    s = img.shape[0] // h  # display_image's enlargement
    k = max(1, int(side / (max(h, w) * s)))
    if k > 1:
        img = img.repeat(k, axis=0).repeat(k, axis=1)
    s *= k
    q = p * s  # one patch on screen, in pixels
    gap = max(2, q // 10)
    cell = q + gap
    label_all = q >= 40
    left, top, middle, right, bottom = 16 if label_all else 40, 56, 48, 16, 12
    width = left + w * s + middle + gw * cell - gap + right
    title, lines = _wrap(title, width)
    top += TITLE_LINE * (lines - 1)
    c = Canvas(width, top + max(h * s, gh * cell - gap) + bottom)
    ax = c.axes(left, top, w * s, h * s)
    _show(ax, img)
    for i in range(1, gh):
        ax.axhline(i * q - 0.5, color="white", lw=1)
    for j in range(1, gw):
        ax.axvline(j * q - 0.5, color="white", lw=1)
    ax.set_title(f"{h}x{w} image, {gh}x{gw} grid of {p}x{p} patches", fontsize=8)
    x0 = left + w * s + middle
    for i in range(gh):
        for j in range(gw):
            pax = c.axes(x0 + j * cell, top + i * cell, q, q)
            _show(pax, img[i * q:(i + 1) * q, j * q:(j + 1) * q])
            n = i * gw + j + 1
            if label_all:
                pax.text(0.04, 0.96, str(n), transform=pax.transAxes, ha="left", va="top", fontsize=7,
                         color="white", bbox=dict(facecolor="black", alpha=0.55, pad=1, lw=0))
            elif j == 0:
                pax.set_ylabel(str(n), fontsize=7, rotation=0, ha="right", va="center")
    c.fig.text((x0 + (gw * cell - gap) / 2) / c.w, 1 - (top - 5) / c.h,
               f"N = {gh * gw} patches in sequence order", fontsize=8, ha="center", va="bottom")
    c.title(title)
    return c.save(path)


def plot_attention_grid(image: np.ndarray, maps: np.ndarray, path: str | Path, title: str,
                        row_labels: Sequence[str], col_labels: Sequence[str], panel: int = 120
                        ) -> tuple[Path, Size]:
    """Attention maps (rows, cols, gh, gw) overlaid on one (C, H, W) uint8 image, e.g.
    layers x heads. Each panel is scaled to its own maximum."""
    rows, cols = maps.shape[:2]
    img = display_image(image)
    left, top, right, bottom = 62, 58, 92, 12
    title, lines = _wrap(title, left + cols * panel + right)
    top += TITLE_LINE * (lines - 1)
    c = Canvas(left + cols * panel + right, top + rows * panel + bottom)
    for r in range(rows):
        for k in range(cols):
            ax = c.axes(left + k * panel + 2, top + r * panel + 2, panel - 4, panel - 4)
            _overlay(ax, img, maps[r, k])
            if k == 0:
                ax.set_ylabel(row_labels[r], fontsize=8)
            if r == 0:
                ax.set_title(col_labels[k], fontsize=8)
    c.colorbar(left + cols * panel + 18, top + 2, rows * panel - 4, "attention / panel maximum")
    c.title(title)
    return c.save(path)


def plot_rollout(images: Sequence[np.ndarray], maps: np.ndarray, path: str | Path, title: str,
                 names: Sequence[str] | None = None, panel: int = 170) -> tuple[Path, Size]:
    """Attention rollout as in the paper's Figure 6: for each image the input, the rollout
    map overlaid on it, and the input masked by the map (maps (B, gh, gw))."""
    n = len(images)
    left, top, right, bottom = 24, 66, 92, 30
    cols = ["input", "rollout", "input x rollout"]
    title, lines = _wrap(title, left + 3 * panel + right)
    top += TITLE_LINE * (lines - 1)
    c = Canvas(left + 3 * panel + right, top + n * panel + bottom)
    for i, image in enumerate(images):
        img = display_image(image)
        mask = _normalized(upsample(maps[i], img.shape[:2]))
        masked = img * (mask if img.ndim == 2 else mask[..., None])
        y = top + i * panel + 2
        axes = [c.axes(left + k * panel + 2, y, panel - 4, panel - 24) for k in range(3)]
        _show(axes[0], img)
        _overlay(axes[1], img, maps[i])
        _show(axes[2], masked)
        if names is not None:
            axes[0].set_xlabel(names[i], fontsize=7)
        if i == 0:
            for ax, label in zip(axes, cols, strict=True):
                ax.set_title(label, fontsize=9)
    c.colorbar(left + 3 * panel + 18, top + 2, n * panel - 24, "rollout / image maximum")
    c.title(title)
    return c.save(path)


def plot_reconstruction(images: Sequence[np.ndarray], masked: Sequence[np.ndarray],
                        rebuilt: Sequence[np.ndarray], path: str | Path, title: str,
                        names: Sequence[str] | None = None, panel: int = 170) -> tuple[Path, Size]:
    """A masked autoencoder at work: for each image the input, what the encoder saw (masked
    patches blanked) and the reconstruction; (C, H, W) uint8 arrays."""
    n = len(images)
    left, top, right, bottom = 24, 66, 24, 30
    title, lines = _wrap(title, left + 3 * panel + right)
    top += TITLE_LINE * (lines - 1)
    c = Canvas(left + 3 * panel + right, top + n * panel + bottom)
    for i, row in enumerate(zip(images, masked, rebuilt, strict=True)):
        axes = [c.axes(left + k * panel + 2, top + i * panel + 2, panel - 4, panel - 24) for k in range(3)]
        for ax, img in zip(axes, row, strict=True):
            _show(ax, display_image(img))
        if names is not None:
            axes[0].set_xlabel(names[i], fontsize=7)
        if i == 0:
            for ax, label in zip(axes, ["input", "visible to the encoder", "reconstruction"], strict=True):
                ax.set_title(label, fontsize=9)
    c.title(title)
    return c.save(path)


def plot_attention_distance(distance: np.ndarray, path: str | Path, title: str,
                            uniform: float | None = None) -> tuple[Path, Size]:
    """Mean attention distance (L, heads) in pixels against depth, one dot per head, as in
    the paper's Figure 7 (right)."""
    layers, heads = distance.shape
    c = Canvas(720, 480)
    ax = c.axes(72, 52, 470, 370)
    depth = np.arange(1, layers + 1)
    colors = colormaps["viridis"](np.linspace(0, 0.9, heads))
    for h in range(heads):
        ax.scatter(depth, distance[:, h], s=18, color=colors[h], label=f"head {h + 1}", zorder=3)
    if uniform is not None:
        ax.axhline(uniform, color="gray", ls="--", lw=1, label="uniform attention")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_xticks(depth)
    ax.set_xlim(0.5, layers + 0.5)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
              ncol=1 if heads <= 16 else 2)
    c.title(title)
    return c.save(path)


def plot_position_similarity(similarity: np.ndarray, path: str | Path, title: str) -> tuple[Path, Size]:
    """Cosine similarity of position embeddings (gh, gw, gh, gw) as the paper's Figure 7
    (centre): tile (i, j) is the similarity of patch (i, j)'s embedding with all others."""
    gh, gw = similarity.shape[:2]
    mosaic = np.full((gh * (gh + 1) - 1, gw * (gw + 1) - 1), np.nan)
    for i in range(gh):
        for j in range(gw):
            mosaic[i * (gh + 1):i * (gh + 1) + gh, j * (gw + 1):j * (gw + 1) + gw] = similarity[i, j]
    side = 520
    aw, ah = (side, side * mosaic.shape[0] / mosaic.shape[1]) if gw >= gh else \
        (side * mosaic.shape[1] / mosaic.shape[0], side)
    left, top = 72, 56
    c = Canvas(left + aw + 110, top + ah + 60)
    ax = c.axes(left, top, aw, ah)
    cmap = colormaps["viridis"].with_extremes(bad="white")
    ax.imshow(mosaic, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([j * (gw + 1) + (gw - 1) / 2 for j in range(gw)], [str(j + 1) for j in range(gw)])
    ax.set_yticks([i * (gh + 1) + (gh - 1) / 2 for i in range(gh)], [str(i + 1) for i in range(gh)])
    ax.tick_params(length=0, labelsize=7 if max(gh, gw) > 10 else 8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    c.colorbar(left + aw + 24, top, ah, "cosine similarity", vmin=-1, vmax=1, cmap="viridis")
    c.title(title)
    return c.save(path)


def plot_patch_pcs(components: np.ndarray, explained: np.ndarray, path: str | Path, title: str,
                   cols: int = 7, panel: int = 86) -> tuple[Path, Size]:
    """Principal components (n, C, P, P) of the patch-embedding filters as small images,
    as in the paper's Figure 7 (left): RGB for 3 channels, grey otherwise, each scaled
    to its own range."""
    n = len(components)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    left, top, bottom = 16, 56, 8
    title, lines = _wrap(title, left * 2 + cols * panel)
    top += TITLE_LINE * (lines - 1)
    c = Canvas(left * 2 + cols * panel, top + rows * panel + bottom)
    for k in range(n):
        comp = components[k]
        comp = (comp - comp.min()) / max(comp.max() - comp.min(), 1e-12)
        img = np.moveaxis(comp, 0, -1) if comp.shape[0] == 3 else comp.mean(axis=0)
        ax = c.axes(left + (k % cols) * panel + 3, top + (k // cols) * panel + 3, panel - 6, panel - 20)
        _show(ax, img)
        ax.set_title(f"PC {k + 1}: {100 * explained[k]:.1f}%", fontsize=7, pad=2)
    c.title(title)
    return c.save(path)


_DRAW = threading.Lock()  # matplotlib's font and text caches are not safe to use from two threads


def overlay_png(image: np.ndarray, attn: np.ndarray, min_side: int = 224) -> tuple[bytes, int, int]:
    """One attention map over its image as PNG bytes, drawn as the rollout figure draws it:
    (C, H, W) uint8 image enlarged to at least min_side pixels, the (gh, gw) map upsampled
    bilinearly on top. Returns (PNG bytes, width, height); safe to call from several threads."""
    img = display_image(image, min_side=min_side)
    h, w = img.shape[:2]
    with _DRAW:
        canvas = Canvas(w, h)
        ax = canvas.axes(0, 0, w, h)
        _overlay(ax, img, attn)
        ax.set_axis_off()
        buf = io.BytesIO()
        canvas.fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue(), w, h
