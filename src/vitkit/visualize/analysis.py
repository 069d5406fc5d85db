"""What a trained ViT has learned, as plain NumPy arrays (Section 4.5 of the paper).

Every function takes arrays (or tensors) and returns NumPy arrays, so a notebook can plot
them any way it likes; `figures.py` draws the paper's versions. Attention matrices follow
the model's layout: one (B, heads, T, T) array per layer, rows are queries, columns keys,
the first `num_prefix_tokens` tokens are the class token (if any), then the N patches in
row-major order on the patch grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..inference import Runner, as_runner

ArrayLike = np.ndarray | torch.Tensor
Grid = tuple[int, int]


def _np(x: ArrayLike, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_layer(a: np.ndarray, i: int) -> None:
    if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"attention of layer {i} must be (B, heads, T, T), got {a.shape}")


def capture_attention(model: torch.nn.Module | Runner, x: torch.Tensor, batch_size: int = 16
                      ) -> list[np.ndarray]:
    """Every layer's attention probabilities for inputs x, as float32 (B, heads, T, T) arrays.

    `model` is a vitkit ViT (run as its weights are stored) or a Runner of one
    (vitkit.inference.prepare, at its precision). Runs in eval mode (no attention dropout)
    in chunks of batch_size, so large sets of images do not hold every intermediate
    activation at once.
    """
    runner = as_runner(model)
    chunks: list[list[np.ndarray]] = []
    for start in range(0, len(x), batch_size):
        _, maps = runner.apply(_attention, x[start:start + batch_size])
        chunks.append([m.float().cpu().numpy() for m in maps])
    return [np.concatenate(layer) for layer in zip(*chunks, strict=True)]


def _attention(model: torch.nn.Module, x: torch.Tensor):
    return model.forward_features(x, return_attention=True)


def readout(matrix: ArrayLike, grid: Grid, num_prefix_tokens: int = 1, pool: str = "cls") -> np.ndarray:
    """How much the pooled token reads from each patch, on the patch grid: (..., gh, gw).

    matrix is (..., T, T). With pool="cls" that is the class token's row; with pool="mean"
    the classifier reads the average of the patch tokens, so the mean of the patch rows.
    Columns of prefix tokens are dropped: they have no place on the image.
    """
    m = _np(matrix)
    p = num_prefix_tokens
    if pool == "cls":
        if p < 1:
            raise ValueError("pool='cls' needs a class token (num_prefix_tokens >= 1)")
        row = m[..., 0, p:]
    elif pool == "mean":
        row = m[..., p:, p:].mean(axis=-2)
    else:
        raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
    gh, gw = grid
    if row.shape[-1] != gh * gw:
        raise ValueError(f"{row.shape[-1]} patch tokens do not fill a {gh}x{gw} grid")
    return row.reshape(*row.shape[:-1], gh, gw)


def class_token_attention(attentions: Sequence[ArrayLike], grid: Grid, num_prefix_tokens: int = 1,
                          pool: str = "cls") -> np.ndarray:
    """Attention of the pooled token to every patch, per layer and head: (L, B, heads, gh, gw).

    For average-pooled models the "pooled token" is the mean of the patch-token query rows.
    """
    out = []
    for i, a in enumerate(attentions):
        a = _np(a, np.float32)
        _check_layer(a, i)
        out.append(readout(a, grid, num_prefix_tokens, pool))
    return np.stack(out)


def attention_rollout(attentions: Sequence[ArrayLike], residual: bool = True) -> np.ndarray:
    """Attention rollout (Abnar and Zuidema, 2020): how much each output token draws on
    each input token through all layers, (B, T, T) with rows summing to 1.

    Per layer the heads are averaged; with residual=True the identity is added for the
    skip connection and rows renormalized (0.5 A + 0.5 I); the layers are multiplied in
    order, R = A_L ... A_2 A_1.
    """
    if len(attentions) == 0:
        raise ValueError("attention_rollout needs at least one layer")
    rollout = None
    for i, a in enumerate(attentions):
        a = _np(a)
        _check_layer(a, i)
        a = a.mean(axis=1)  # (B, T, T)
        if residual:
            a = a + np.eye(a.shape[-1])
            a = a / a.sum(axis=-1, keepdims=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


def patch_distances(grid: Grid, patch_size: int) -> np.ndarray:
    """Euclidean distance in pixels between the centres of every pair of patches: (N, N)."""
    gh, gw = grid
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    xy = np.stack([rows.ravel(), cols.ravel()], axis=1) * float(patch_size)
    return np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))


def mean_attention_distance(attentions: Sequence[ArrayLike], grid: Grid, patch_size: int,
                            num_prefix_tokens: int = 1) -> np.ndarray:
    """The paper's "attention distance" (Figure 7, right): for each layer and head, the
    distance in pixels between a query patch and the patches it attends to, weighted by
    the attention, averaged over query patches and images. Returns (L, heads).

    Prefix tokens have no position, so their rows and columns are left out and each
    patch row renormalized over the patches.
    """
    dist = patch_distances(grid, patch_size)
    p = num_prefix_tokens
    out = []
    for i, a in enumerate(attentions):
        a = _np(a)
        _check_layer(a, i)
        a = a[..., p:, p:]
        if a.shape[-1] != dist.shape[0]:
            raise ValueError(f"layer {i}: {a.shape[-1]} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
        a = a / np.maximum(a.sum(axis=-1, keepdims=True), 1e-12)
        per_query = np.einsum("bhqk,qk->bhq", a, dist)
        out.append(per_query.mean(axis=(0, 2)))
    return np.stack(out)


def uniform_attention_distance(grid: Grid, patch_size: int) -> float:
    """Mean attention distance of uniform attention over all patches: a reference line."""
    return float(patch_distances(grid, patch_size).mean())


def position_embedding_similarity(pos_embed: ArrayLike, grid: Grid, num_prefix_tokens: int = 1
                                  ) -> np.ndarray:
    """Cosine similarity of each patch's position embedding with every other's (Figure 7,
    centre): (gh, gw, gh, gw), where [i, j] is the map for the patch at row i, column j.

    pos_embed is (1, T, D) or (T, D) including the prefix rows, as in model.pos_embed.
    """
    pe = _np(pos_embed)
    if pe.ndim == 3:
        pe = pe[0]
    pe = pe[num_prefix_tokens:]
    gh, gw = grid
    if pe.shape[0] != gh * gw:
        raise ValueError(f"{pe.shape[0]} patch position embeddings do not fill a {gh}x{gw} grid")
    unit = pe / np.maximum(np.linalg.norm(pe, axis=-1, keepdims=True), 1e-12)
    return (unit @ unit.T).reshape(gh, gw, gh, gw)


def patch_embedding_pcs(weight: ArrayLike, n: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Leading principal components of the patch-embedding filters (Figure 7, left).

    weight is the (D, C, P, P) kernel of the patch projection: D filters, each a flattened
    C x P x P patch. Returns the top n components (n, C, P, P), unit-norm, sign fixed so
    that the largest entry is positive, and the fraction of variance each explains (n,).
    """
    w = _np(weight)
    if w.ndim != 4:
        raise ValueError(f"patch-embedding weight must be (D, C, P, P), got {w.shape}")
    x = w.reshape(w.shape[0], -1)
    x = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    n = min(n, len(s))
    comps = vt[:n]
    big = np.abs(comps).argmax(axis=1)
    comps = comps * np.sign(comps[np.arange(n), big])[:, None]
    var = s**2
    ratio = var[:n] / max(var.sum(), 1e-12)
    return comps.reshape(n, *w.shape[1:]), ratio


def upsample(maps: ArrayLike, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize (..., gh, gw) maps to (..., H, W), to overlay them on the image."""
    m = torch.as_tensor(_np(maps, np.float32))
    lead = m.shape[:-2]
    flat = m.reshape(-1, 1, *m.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size).numpy()
