"""Embeddings of image files written for other tools, and nearest neighbours by cosine similarity.

Formats, chosen by the output's extension: .npy (float32 (N, D)) with the file names beside
it in <name>.names.json, .safetensors (tensor "features", the names in its metadata), or
.parquet (one row per image: string column "name", column "features" a fixed-size list of D
float32; needs pyarrow, the parquet extra), which data-frame and SQL tools read directly.
None holds pickled objects.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .files import atomic_write, atomic_write_bytes

FORMATS = (".npy", ".safetensors", ".parquet")
PARQUET_FIX = "pip install 'vitkit[parquet]'"


def names_path(npy: str | Path) -> Path:
    """Where the file names of an .npy embedding file go: emb.npy -> emb.names.json."""
    npy = Path(npy)
    return npy.with_name(npy.stem + ".names.json")


def check_format(path: str | Path) -> str:
    """The output's extension when vitkit writes it (checked before any feature is computed)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"--out {path}: unknown format {suffix or '(no extension)'}; use "
                         f"{' or '.join(FORMATS)}")
    if suffix == ".parquet":
        _pyarrow(path)
    return suffix


def _pyarrow(path: str | Path):
    """pyarrow, or a one-line error naming the fix (it is an optional dependency)."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ValueError(f"{path}: .parquet needs pyarrow: {PARQUET_FIX}") from None
    return pyarrow


def write_embeddings(path: str | Path, features: np.ndarray, names: list[str]) -> list[Path]:
    """Write features (N, D) with their N file names; returns the files written."""
    path = Path(path)
    suffix = check_format(path)
    if len(features) != len(names):
        raise ValueError(f"{len(features)} embeddings but {len(names)} names")
    features = np.ascontiguousarray(features, dtype=np.float32)
    if suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, features, allow_pickle=False)
        atomic_write_bytes(path, buf.getvalue())
        side = atomic_write_bytes(names_path(path), (json.dumps(names, indent=0) + "\n").encode())
        return [path, side]
    if suffix == ".parquet":
        return [_write_parquet(path, features, names)]
    from safetensors.numpy import save

    atomic_write_bytes(path, save({"features": features}, metadata={"names": json.dumps(names)}))
    return [path]


def read_embeddings(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read what write_embeddings wrote (no pickle is ever loaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        side = names_path(path)
        if not side.is_file():
            raise FileNotFoundError(f"{side}: the file names of {path} are missing")
        return np.load(path, allow_pickle=False), json.loads(side.read_text())
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            return f.get_tensor("features"), json.loads((f.metadata() or {}).get("names", "[]"))
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path)
    raise ValueError(f"{path}: unknown format {path.suffix}; expected {' or '.join(FORMATS)}")


def _write_parquet(path: Path, features: np.ndarray, names: list[str]) -> Path:
    """One row per image: name (string) and features (fixed-size list of float32)."""
    pa = _pyarrow(path)
    if features.ndim != 2 or features.shape[1] < 1:
        raise ValueError(f"{path}: embeddings must be (N, D) with D >= 1, got {features.shape}")
    d = features.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1), pa.float32()), d)
    table = pa.table({"name": pa.array([str(x) for x in names], pa.string()), "features": column})
    return atomic_write(path, lambda f: pa.parquet.write_table(table, f))


def _read_parquet(path: Path) -> tuple[np.ndarray, list[str]]:
    pa = _pyarrow(path)
    try:
        schema = pa.parquet.read_schema(path)
        missing = [c for c in ("name", "features") if c not in schema.names]
        if missing:
            raise ValueError(f"{path}: no column {' or '.join(missing)} (expected name and features)")
        table = pa.parquet.read_table(path, columns=["name", "features"])
    except (pa.ArrowException, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: not a readable parquet file ({first})") from None
    ftype = table.schema.field("features").type
    if not (pa.types.is_fixed_size_list(ftype) and pa.types.is_floating(ftype.value_type)):
        raise ValueError(f"{path}: column features is {ftype}; expected a fixed-size list of float32")
    column = table.column("features").combine_chunks()
    if column.null_count or column.flatten().null_count:
        raise ValueError(f"{path}: column features has missing values")
    features = column.flatten().to_numpy().astype(np.float32, copy=False).reshape(len(table), ftype.list_size)
    return features, [str(x) for x in table.column("name").to_pylist()]


def nearest(query: np.ndarray, features: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of `features` most cosine-similar to each query row: (indices, similarities),
    each (Q, k), most similar first."""
    def unit(a):
        a = np.asarray(a, np.float64)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    sim = unit(np.atleast_2d(query)) @ unit(features).T
    k = min(k, sim.shape[1])
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sim, idx, axis=1)
