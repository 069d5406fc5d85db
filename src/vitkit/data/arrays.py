"""Data sets held in memory as uint8 tensors: the built-in digits set, CIFAR and MNIST files.

Each loader returns an ImageArrays: images (N, C, H, W) uint8, labels (N,) int64 and the
class names. Small images live this way for the whole run, so an epoch never waits on
decoding.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class ImageArrays:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} "
                             f"{self.images.dtype}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | np.ndarray) -> ImageArrays:
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageArrays(self.images[index], self.labels[index], self.classes)

    def per_class(self, n: int, seed: int = 0) -> ImageArrays:
        """At most n images of each class, chosen at random with a fixed seed."""
        g = torch.Generator().manual_seed(seed)
        keep = []
        for c in range(len(self.classes)):
            idx = (self.labels == c).nonzero().flatten()
            keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
        return self.subset(torch.cat(keep).sort().values)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a fixed stratified train/test split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageArrays, ImageArrays]:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16), split 80/20 stratified.

    Values are scaled to 0..255 so every data set shares one uint8 pipeline.
    """
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(d.target.astype(np.int64))
    full = ImageArrays(images, labels, [str(i) for i in range(10)])
    train, test = stratified_split(d.target, test_fraction, seed)
    return full.subset(train), full.subset(test)


# ---- CIFAR python batches -------------------------------------------------------------------

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles of dicts of NumPy arrays, lists and strings. Only the
    globals needed to rebuild NumPy arrays are allowed; anything else is refused, so a
    crafted file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a CIFAR python batch ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a CIFAR python batch (a {type(d).__name__})")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_layout(root: Path) -> tuple[list[Path], Path, str, Path, str]:
    """(training batches, test batch, label key, meta file, class-name key) of a CIFAR directory."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (expected CIFAR python batches)")
    if (root / "data_batch_1").is_file():
        return ([root / f"data_batch_{i}" for i in range(1, 6)], root / "test_batch", "labels",
                root / "batches.meta", "label_names")
    if (root / "train").is_file():
        return [root / "train"], root / "test", "fine_labels", root / "meta", "fine_label_names"
    raise FileNotFoundError(f"{root}: no data_batch_1 (CIFAR-10) or train (CIFAR-100) file")


def _read_cifar(files: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing CIFAR batch")
        d = _read_batch(f)
        if "data" not in d or label_key not in d:
            raise ValueError(f"{f}: missing 'data' or '{label_key}' entry")
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _cifar_classes(meta_path: Path, names_key: str, labels: torch.Tensor) -> list[str]:
    if meta_path.is_file():
        names = _read_batch(meta_path)[names_key]
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names]
        if classes:
            return classes
    return [str(i) for i in range(int(labels.max()) + 1)]


def load_cifar(path: str | Path) -> tuple[ImageArrays, ImageArrays]:
    """CIFAR-10 or CIFAR-100 "python version" directory (data_batch_1..5 + test_batch, or
    train + test with a meta file), read without running any pickled code."""
    names, test_name, label_key, meta_path, names_key = _cifar_layout(Path(path))
    xtr, ytr = _read_cifar(names, label_key)
    xte, yte = _read_cifar([test_name], label_key)
    classes = _cifar_classes(meta_path, names_key, ytr)
    return ImageArrays(xtr, ytr, classes), ImageArrays(xte, yte, classes)


def load_cifar_test(path: str | Path) -> ImageArrays:
    """The test batch of a CIFAR-10 or CIFAR-100 directory alone (the training batches unread)."""
    _, test_name, label_key, meta_path, names_key = _cifar_layout(Path(path))
    x, y = _read_cifar([test_name], label_key)
    return ImageArrays(x, y, _cifar_classes(meta_path, names_key, y))


# ---- MNIST / Fashion-MNIST IDX files --------------------------------------------------------

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a NumPy array: the format of MNIST and Fashion-MNIST."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes (truncated?)")
    return data.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root}: no {stem}[.gz] file")


def _mnist_split(root: Path, prefix: str, fashion: bool) -> ImageArrays:
    classes = FASHION_CLASSES if fashion else [str(i) for i in range(10)]
    x = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    y = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    return ImageArrays(torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64)), classes)


def _mnist_root(path: str | Path) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (expected MNIST IDX files)")
    return root


def load_mnist(path: str | Path, fashion: bool = False) -> tuple[ImageArrays, ImageArrays]:
    """MNIST or Fashion-MNIST from a directory holding the four IDX files."""
    root = _mnist_root(path)
    return _mnist_split(root, "train", fashion), _mnist_split(root, "t10k", fashion)


def load_mnist_test(path: str | Path, fashion: bool = False) -> ImageArrays:
    """The t10k (test) files of an MNIST or Fashion-MNIST directory alone."""
    return _mnist_split(_mnist_root(path), "t10k", fashion)
