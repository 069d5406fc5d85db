"""Frozen features of a data set or of image files, computed once and cached on disk.

A representation is measured by what a simple model can read from it without changing it
(linear few-shot, linear probe, k-NN: vitkit.probe). Those need the same features again and
again, so they are computed once per (model weights, input spec, data, options) and kept in
a safetensors file (no pickle) under the vitkit cache directory; a second call reads them.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import default_cache_dir, model_fingerprint
from .data.arrays import ImageArrays, iterate_eval
from .data.folder import _DECODE_ERRORS, file_stamp
from .data.preprocess import DECODING, normalize, open_image, prepare_image
from .inference import by_size, prepare
from .notices import VitkitWarning, one_line
from .opened import OpenedModel
from .representation import FeatureOptions, read_features, resolve_options

# bump when what is stored changes, so old cache files are not read (2: images turned upright by
# their EXIF orientation, and the files that could not be read are recorded)
FORMAT_VERSION = 2


@dataclass
class Features:
    """Features (N, D) float32 with their labels (N,) or file names, and where they are cached."""

    features: np.ndarray
    labels: np.ndarray | None = None
    names: list[str] | None = None
    cache_file: Path | None = None
    from_cache: bool = False
    unreadable: list[str] | None = None  # files skipped as unreadable (file features), with why


class FeatureModel:
    """A model prepared once for feature extraction by vitkit.inference.prepare (PyTorch, at the
    inference precision; the caller's model is left as it was)."""

    def __init__(self, opened: OpenedModel, options: FeatureOptions):
        model = opened.model
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"{opened.source}: features need a PyTorch ViT (an exported .onnx file holds "
                             "the classifier only); open the model folder or checkpoint instead")
        layer, token = resolve_options(model, options, opened.source)
        self.options, self.token, self.spec = options, token, opened.spec
        self.device = opened.device
        self.fingerprint = model_fingerprint(model, opened.spec.to_dict())
        self.runner = prepare(model, self.device, options.precision, engine="torch")
        self.precision = self.runner.precision
        self.layer = layer

    def key(self, data_key: str) -> str:
        opts = {**asdict(self.options), "token": self.token, "layer": self.layer, "precision": self.precision}
        opts.pop("batch_size")
        text = json.dumps([FORMAT_VERSION, DECODING, self.fingerprint, data_key, opts], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images (B, C, H, W) -> features (B, D) float32."""
        features, _ = self.runner.apply(read_features, x.to(self.device), self.layer, self.token,
                                        self.options.norm)
        return features.float().cpu()


def data_fingerprint(data) -> str | None:
    """Identity of a data set: the bytes of in-memory images and labels, or the file names,
    sizes and modification times of a streamed folder; None for anything else (not cached)."""
    h = hashlib.sha256()
    if isinstance(data, ImageArrays):
        h.update(f"arrays|{tuple(data.images.shape)}|{data.classes}".encode())
        h.update(data.images.contiguous().numpy().tobytes())
        h.update(data.labels.contiguous().numpy().tobytes())
        return h.hexdigest()
    index = getattr(data, "index", None)
    if index is not None and hasattr(index, "paths"):
        shape = f"{getattr(data, 'channels', '')}|{getattr(data, 'size', '')}"
        h.update(f"folder|{shape}|{index.classes}".encode())
        for p, y in zip(index.paths, index.labels, strict=True):
            h.update(f"{_resolved(p)}|{y}|{file_stamp(p)}\n".encode())
        return h.hexdigest()
    return None


def _resolved(p: str | Path) -> Path:
    """The absolute path with links resolved; as given (made absolute) for a link that loops, which
    Path.resolve refuses and which is skipped as unreadable anyway."""
    try:
        return Path(p).resolve()
    except (OSError, RuntimeError):
        return Path(p).absolute()


def _files_fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256(b"files")
    for p in files:
        h.update(f"{_resolved(p)}|{file_stamp(p)}\n".encode())
    return h.hexdigest()


def _cache_path(cache_dir: str | Path | None, key: str) -> Path:
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / "features" / f"{key}.safetensors"


def _read_cache(path: Path) -> Features | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            feats = f.get_tensor("features")
            labels = f.get_tensor("labels") if "labels" in f.keys() else None
        names = json.loads(meta["names"]) if "names" in meta else None
        unreadable = json.loads(meta["unreadable"]) if "unreadable" in meta else None
        return Features(feats, labels, names, path, from_cache=True, unreadable=unreadable)
    except Exception:  # a damaged cache file is recomputed, never trusted
        warnings.warn(f"{one_line(path)}: unreadable feature cache, ignored and rebuilt", VitkitWarning,
                      stacklevel=3)
        return None


def _write_cache(path: Path, result: Features, meta: dict) -> None:
    from safetensors.numpy import save

    from .files import atomic_write_bytes

    tensors = {"features": np.ascontiguousarray(result.features, dtype=np.float32)}
    if result.labels is not None:
        tensors["labels"] = np.ascontiguousarray(result.labels, dtype=np.int64)
    meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()}
    if result.names is not None:
        meta["names"] = json.dumps(result.names)
    if result.unreadable:
        meta["unreadable"] = json.dumps(result.unreadable)
    try:
        atomic_write_bytes(path, save(tensors, metadata=meta))
        result.cache_file = path
    except OSError as e:  # a read-only cache directory costs a recomputation, nothing else
        warnings.warn(f"{one_line(path)}: cannot write the feature cache ({e.strerror})", VitkitWarning,
                      stacklevel=3)


def dataset_features(fm: FeatureModel, data, cache_dir: str | Path | None = None, workers: int = 0,
                     cache: bool = True) -> Features:
    """Features and labels of every image of `data` (uint8 ImageArrays or a streaming folder, at
    the model's size and channels), in order (images of sizes of their own: one size after
    another); read from the cache when computed before."""
    data_key = data_fingerprint(data) if cache else None
    path = _cache_path(cache_dir, fm.key(data_key)) if data_key else None
    if path is not None and (hit := _read_cache(path)) is not None:
        return hit
    feats, labels = [], []
    for x, y in iterate_eval(data, fm.options.batch_size, workers):
        feats.append(fm(normalize(x, fm.spec)))
        labels.append(torch.as_tensor(y))
    if not feats:
        raise ValueError("no images to compute features of")
    result = Features(torch.cat(feats).numpy(), torch.cat(labels).numpy().astype(np.int64))
    if path is not None:
        _write_cache(path, result, {"token": fm.token, "layer": fm.layer, "norm": fm.options.norm,
                                    "precision": fm.precision})
    return result


def file_features(fm: FeatureModel, files: list[Path], cache_dir: str | Path | None = None,
                  cache: bool = True) -> Features:
    """Features of image files (prepared as for prediction), with their names; unreadable files
    are skipped with a warning naming them, repeated when the features are read from the cache."""
    files = [Path(f) for f in files]
    path = _cache_path(cache_dir, fm.key(_files_fingerprint(files))) if cache else None
    if path is not None and (hit := _read_cache(path)) is not None:
        for message in hit.unreadable or []:
            warnings.warn(message, VitkitWarning, stacklevel=2)
        return hit
    feats, names, batch, unreadable = [], [], [], []

    def flush():
        if batch:
            rows = by_size(lambda idx: list(fm(torch.stack([batch[i] for i in idx]))), batch)
            feats.append(torch.stack(rows))
            batch.clear()

    for f in files:
        try:
            with open_image(f) as im:
                batch.append(prepare_image(im, fm.spec))
        except _DECODE_ERRORS as e:
            unreadable.append(f"{one_line(f)}: cannot read image ({e}), skipped")
            warnings.warn(unreadable[-1], VitkitWarning, stacklevel=2)
            continue
        names.append(str(f))
        if len(batch) == fm.options.batch_size:
            flush()
    flush()
    if not feats:
        raise ValueError(f"none of the {len(files)} files could be read as an image")
    result = Features(torch.cat(feats).numpy(), names=names, unreadable=unreadable)
    if path is not None:
        _write_cache(path, result, {"token": fm.token, "layer": fm.layer, "norm": fm.options.norm,
                                    "precision": fm.precision})
    return result
