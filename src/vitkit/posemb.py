"""Position embeddings: the fixed 2D sin-cos table and 2D resampling of learned ones.

The paper (Section 3.2) fine-tunes at higher resolution by 2D-interpolating the
pre-trained position embeddings to the new patch grid; the class-token row is kept.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

ResizeMode = Literal["bicubic", "bilinear", "jax"]


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sin-cos embeddings (1, gh*gw, dim), laid out as in big_vision."""
    gh, gw = grid
    y, x = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    omega = torch.arange(dim // 4, dtype=torch.float64) / max(dim // 4 - 1, 1)
    omega = 1.0 / temperature**omega
    y = y.flatten()[:, None].double() * omega[None]
    x = x.flatten()[:, None].double() * omega[None]
    pe = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)
    return pe.float()[None]


def _zoom_linear_align_corners(grid: np.ndarray, new_hw: tuple[int, int]) -> np.ndarray:
    """scipy.ndimage.zoom(order=1) along the two grid axes, written out in NumPy.

    zoom maps output index i to input coordinate i * (n_in - 1) / (n_out - 1): linear
    interpolation with align-corners semantics, which the official JAX code uses.
    """
    out = grid
    for axis, n_out in enumerate(new_hw):
        n_in = out.shape[axis]
        if n_out == n_in:
            continue
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        lo = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 1)
        hi = np.clip(lo + 1, 0, n_in - 1)
        frac = (pos - lo).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
    return out


def resample_grid(
    posemb: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    mode: ResizeMode = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resize grid embeddings (1, gh*gw, D) to new_grid by 2D interpolation."""
    n, dim = posemb.shape[1], posemb.shape[2]
    if old_grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position embeddings")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"{n} position embeddings do not fill a {old_grid[0]}x{old_grid[1]} grid")
    if all(isinstance(g, int) for g in new_grid) and tuple(new_grid) == tuple(old_grid):
        return posemb  # a symbolic grid (traced export) skips this: resampling to the same grid is exact
    grid = posemb.reshape(1, old_grid[0], old_grid[1], dim)
    if mode == "jax":
        arr = grid[0].detach().cpu().double().numpy()
        out = torch.from_numpy(_zoom_linear_align_corners(arr, tuple(new_grid)))
        return out.to(posemb.dtype).to(posemb.device).reshape(1, -1, dim)
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"unknown position-embedding resize mode {mode!r}")
    orig_dtype = posemb.dtype
    grid = grid.permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, antialias=antialias, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(orig_dtype)


def resample_pos_embed(
    posemb: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: ResizeMode = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resize (1, prefix + gh*gw, D) embeddings to a new grid, keeping the prefix rows as they are."""
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    grid = resample_grid(grid, new_grid, old_grid, mode=mode, antialias=antialias)
    return torch.cat([prefix, grid], dim=1)
