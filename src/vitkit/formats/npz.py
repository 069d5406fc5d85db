"""Official Google ViT checkpoints: flax parameters flattened with "/" into an .npz file.

Two namings exist. The vit_jax repository (the paper's code) numbers the modules of an
encoder block in creation order: ``LayerNorm_0``, ``MultiHeadDotProductAttention_1``,
``LayerNorm_2``, ``MlpBlock_3``, and keeps the class token's row in
``Transformer/posembed_input/pos_embedding``. big_vision's Linen ViT numbers them per type
(``MultiHeadDotProductAttention_0``, ``LayerNorm_1``, ``MlpBlock_0``) and adds
``pos_embedding`` to the patches only, before the class token is prepended.
Training checkpoints nest the parameters under ``opt/target/`` (vit_jax) or ``params/``
(big_vision); big_vision may also stack all blocks into one ``Transformer/encoderblock``.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .common import Source

Naming = Literal["vit_jax", "big_vision"]

# (attention, second LayerNorm, MLP) module names inside an encoder block
_BLOCK_NAMES: dict[str, tuple[str, str, str]] = {
    "vit_jax": ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
    "big_vision": ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"),
}
_POS_KEYS = {"vit_jax": "Transformer/posembed_input/pos_embedding", "big_vision": "pos_embedding"}
PREFIXES = ("opt/target/", "params/")
# Parts of other models stored in the same format; vitkit's ViT would compute something else.
_UNSUPPORTED = {"conv_root/": "the ResNet stem of a hybrid ViT", "MAPHead_0/": "a MAP pooling head",
                "params/img/": "a SigLIP image tower"}
_BLOCK_RE = re.compile(r"^Transformer/encoderblock_(\d+)/")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, without unpickling anything (allow_pickle=False)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError(f"{path}: not an .npz archive")
            out = {}
            for k in f.files:
                try:
                    out[k] = f[k]
                except ValueError:
                    raise ValueError(f"{path}: array {k!r} holds Python objects that would need "
                                     "unpickling; refused") from None
            return out
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: refused to read: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npz archive ({e})") from None


def _t(a: np.ndarray, key: str) -> torch.Tensor:
    if a.dtype.kind != "f":
        raise ValueError(f"array {key!r} has dtype {a.dtype}, expected floating point")
    return torch.from_numpy(np.array(a))


def detect_prefix(arrays: dict[str, np.ndarray]) -> str:
    """The prefix the parameters are stored under: '', 'opt/target/' or 'params/'."""
    for key, what in _UNSUPPORTED.items():
        if any(k.startswith(key) or f"/{key}" in k for k in arrays):
            raise ValueError(f"the checkpoint holds {what} ({key}...), which vitkit's ViT does not model")
    for prefix in ("", *PREFIXES):
        if f"{prefix}embedding/kernel" in arrays:
            return prefix
    some = ", ".join(sorted(arrays)[:4])
    raise ValueError(f"no embedding/kernel array: not a ViT checkpoint (keys: {some} ...)")


def _unstack_scanned(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision's scanned encoder keeps one array per parameter with the layers stacked
    on axis 0; split it into the per-block names."""
    scan = "Transformer/encoderblock/"
    if not any(k.startswith(scan) for k in params):
        return params
    out = {}
    for k, v in params.items():
        if k.startswith(scan):
            for i in range(v.shape[0]):
                out[f"Transformer/encoderblock_{i}/{k[len(scan):]}"] = v[i]
        else:
            out[k] = v
    return out


def from_npz(arrays: dict[str, np.ndarray], unknown: list[str] | None = None
             ) -> tuple[dict[str, torch.Tensor], dict]:
    """Official .npz arrays -> (vitkit state dict, facts about the file); keys not understood
    are appended to `unknown` when given, else refused (the convention of every reader).

    The facts: prefix, naming, scanned, num_heads, ignored (arrays outside the prefix,
    such as optimizer state). A big_vision position table without a class row gets a
    zero row, which is exact: vitkit adds the row to the class token, big_vision adds nothing.
    """
    prefix = detect_prefix(arrays)
    params = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    ignored = sorted(k for k in arrays if not k.startswith(prefix))
    scanned = any(k.startswith("Transformer/encoderblock/") for k in params)
    params = _unstack_scanned(params)
    if any("MultiHeadDotProductAttention_1/" in k for k in params):
        naming = "vit_jax"
    elif any("MultiHeadDotProductAttention_0/" in k for k in params) or "pos_embedding" in params:
        naming = "big_vision"
    else:
        naming = "vit_jax"
    mha, ln2, mlp = _BLOCK_NAMES[naming]
    left = dict(params)
    sd: dict[str, torch.Tensor] = {}

    def take(key: str) -> np.ndarray | None:
        return left.pop(key, None)

    def put(ours: str, a: np.ndarray | None, transform=None) -> None:
        if a is not None:
            t = _t(a, prefix + ours)
            sd[ours] = transform(t) if transform else t

    kernel = take("embedding/kernel")  # (P, P, C, D) -> (D, C, P, P)
    if kernel.ndim != 4:
        raise ValueError(f"{prefix}embedding/kernel has shape {kernel.shape}, expected (P, P, C, D)")
    put("patch_embed.proj.weight", kernel, lambda t: t.permute(3, 2, 0, 1))
    put("patch_embed.proj.bias", take("embedding/bias"))
    put("cls_token", take("cls"))
    pos = take(_POS_KEYS[naming])
    if pos is not None:
        pos = pos.reshape(1, -1, pos.shape[-1])
        if naming == "big_vision" and "cls_token" in sd:
            pos = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
        put("pos_embed", pos)
    put("norm.weight", take("Transformer/encoder_norm/scale"))
    put("norm.bias", take("Transformer/encoder_norm/bias"))
    for ours, theirs in (("pre_logits.dense", "pre_logits"), ("head", "head")):
        put(f"{ours}.weight", take(f"{theirs}/kernel"), lambda t: t.T)
        put(f"{ours}.bias", take(f"{theirs}/bias"))

    layers = sorted({int(m.group(1)) for k in params if (m := _BLOCK_RE.match(k))})
    num_heads = None
    for i in layers:
        b, o = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        put(o + "norm1.weight", take(b + "LayerNorm_0/scale"))
        put(o + "norm1.bias", take(b + "LayerNorm_0/bias"))
        q, k, v = (take(f"{b}{mha}/{n}/kernel") for n in ("query", "key", "value"))
        if q is not None and k is not None and v is not None:  # (D, heads, head_dim) each
            num_heads = num_heads or q.shape[1]
            qkv = np.concatenate([x.reshape(x.shape[0], -1).T for x in (q, k, v)], axis=0)
            put(o + "attn.qkv.weight", qkv)
        biases = [take(f"{b}{mha}/{n}/bias") for n in ("query", "key", "value")]
        if all(x is not None for x in biases):
            put(o + "attn.qkv.bias", np.concatenate([x.reshape(-1) for x in biases]))
        out = take(f"{b}{mha}/out/kernel")  # (heads, head_dim, D) -> (D, heads * head_dim)
        if out is not None:
            put(o + "attn.proj.weight", out.reshape(-1, out.shape[-1]).T)
        put(o + "attn.proj.bias", take(f"{b}{mha}/out/bias"))
        put(o + "norm2.weight", take(f"{b}{ln2}/scale"))
        put(o + "norm2.bias", take(f"{b}{ln2}/bias"))
        for j in (0, 1):
            put(f"{o}mlp.fc{j + 1}.weight", take(f"{b}{mlp}/Dense_{j}/kernel"), lambda t: t.T)
            put(f"{o}mlp.fc{j + 1}.bias", take(f"{b}{mlp}/Dense_{j}/bias"))
    facts = dict(prefix=prefix, naming=naming, scanned=scanned, num_heads=num_heads, ignored=ignored)
    rest = sorted(prefix + k for k in left)
    if rest and unknown is None:
        raise ValueError(f"unexpected arrays in the .npz file: {', '.join(rest[:6])}")
    if unknown is not None:
        unknown.extend(rest)
    return sd, facts


def to_npz(sd: dict[str, torch.Tensor], num_heads: int, naming: Naming = "vit_jax"
           ) -> dict[str, np.ndarray]:
    """vitkit state dict -> official .npz arrays (float32), vit_jax or big_vision naming.

    For big_vision the class token's position row is folded into the class token, which
    is exact: the model only ever uses their sum.
    """
    if naming not in _BLOCK_NAMES:
        raise ValueError(f"unknown npz naming {naming!r}: expected vit_jax or big_vision")
    if any(k.startswith("patch_embed.stem.") for k in sd):
        raise ValueError("the official ViT format has no convolutional stem (stem='conv')")
    mha, ln2, mlp = _BLOCK_NAMES[naming]
    a = {k: v.detach().cpu().float().numpy() for k, v in sd.items()}
    out: dict[str, np.ndarray] = {}
    done: set[str] = set()

    def get(key: str) -> np.ndarray:
        done.add(key)
        return a[key]

    out["embedding/kernel"] = get("patch_embed.proj.weight").transpose(2, 3, 1, 0)
    out["embedding/bias"] = get("patch_embed.proj.bias")
    cls = get("cls_token") if "cls_token" in a else None
    if "pos_embed" in a:
        pos = get("pos_embed")
        if naming == "big_vision":
            if cls is not None:
                cls, pos = cls + pos[:, :1], pos[:, 1:]
            out["pos_embedding"] = pos
        else:
            out["Transformer/posembed_input/pos_embedding"] = pos
    if cls is not None:
        out["cls"] = cls
    out["Transformer/encoder_norm/scale"] = get("norm.weight")
    out["Transformer/encoder_norm/bias"] = get("norm.bias")
    for ours, theirs in (("pre_logits.dense", "pre_logits"), ("head", "head")):
        if f"{ours}.weight" in a:
            out[f"{theirs}/kernel"] = get(f"{ours}.weight").T
            out[f"{theirs}/bias"] = get(f"{ours}.bias")
    layers = sorted({int(k.split(".")[1]) for k in a if k.startswith("blocks.")})
    for i in layers:
        o, b = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        out[b + "LayerNorm_0/scale"] = get(o + "norm1.weight")
        out[b + "LayerNorm_0/bias"] = get(o + "norm1.bias")
        qkv = get(o + "attn.qkv.weight")
        d = qkv.shape[1]
        for n, w in zip(("query", "key", "value"), np.split(qkv, 3, axis=0), strict=True):
            out[f"{b}{mha}/{n}/kernel"] = w.T.reshape(d, num_heads, -1)
        if o + "attn.qkv.bias" in a:
            for n, w in zip(("query", "key", "value"), np.split(get(o + "attn.qkv.bias"), 3), strict=True):
                out[f"{b}{mha}/{n}/bias"] = w.reshape(num_heads, -1)
        out[f"{b}{mha}/out/kernel"] = get(o + "attn.proj.weight").T.reshape(num_heads, -1, d)
        out[f"{b}{mha}/out/bias"] = get(o + "attn.proj.bias")
        out[f"{b}{ln2}/scale"] = get(o + "norm2.weight")
        out[f"{b}{ln2}/bias"] = get(o + "norm2.bias")
        for j in (0, 1):
            out[f"{b}{mlp}/Dense_{j}/kernel"] = get(f"{o}mlp.fc{j + 1}.weight").T
            out[f"{b}{mlp}/Dense_{j}/bias"] = get(f"{o}mlp.fc{j + 1}.bias")
    rest = sorted(set(a) - done)
    if rest:
        raise ValueError(f"no official ViT name for vitkit keys: {', '.join(rest[:6])}")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def read_npz_source(path: Path) -> Source:
    """An official .npz file (vit_jax or big_vision names) as vitkit tensors plus its facts."""
    unknown: list[str] = []
    sd, facts = from_npz(read_npz(path), unknown)
    detail = f"{facts['naming']} naming"
    if facts["prefix"]:
        detail += f", under {facts['prefix']}"
    if facts["scanned"]:
        detail += ", scanned blocks"
    known = dict(gelu="tanh", layer_norm_eps=1e-6)
    if facts["num_heads"]:
        known["num_heads"] = int(facts["num_heads"])
    src = Source("npz", sd, detail=detail, known=known, unknown=unknown,
                  extra={"data": dict(mean=[0.5] * 3, std=[0.5] * 3)})
    if facts["ignored"]:
        src.notes.append(f"{len(facts['ignored'])} arrays outside {facts['prefix']} ignored "
                         f"(optimizer state): {', '.join(facts['ignored'][:3])}")
    src.notes.append("GELU: tanh approximation, as the official JAX code computes it")
    return src
