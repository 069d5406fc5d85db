"""Data sets held in memory as uint8 tensors: the built-in digits set, CIFAR and MNIST files.

Each loader returns an ImageArrays: images (N, C, H, W) uint8, labels (N,) int64 and the
class names. Small images live this way for the whole run, so an epoch never waits on
decoding. A multi-label set (an image carries any number of tags) holds labels (N, K):
multi-hot, 0/1 values (uint8, bool or float), one column per name in classes.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MULTI_HOT_DTYPES = (torch.uint8, torch.bool, torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class ImageArrays:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64 class indices, or (N, K) multi-hot 0/1 for multi-label data
    classes: list[str]
    # (N, 2) int64: each image's own (h, w), top-left in images[i] (images of sizes of their own,
    # resize "keep": the images tensor is a canvas that holds the largest); None: all (H, W)
    sizes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} "
                             f"{self.images.dtype}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.sizes is not None and tuple(self.sizes.shape) != (len(self.images), 2):
            raise ValueError(f"sizes must be ({len(self.images)}, 2), got {tuple(self.sizes.shape)}")
        if self.labels.ndim == 2:
            self._check_multi_hot()
        elif self.labels.ndim != 1:
            raise ValueError(f"labels must be (N,) class indices or (N, K) multi-hot, got "
                             f"{tuple(self.labels.shape)}")

    def _check_multi_hot(self) -> None:
        """A (N, K) label tensor must be 0/1 with one column per class name: anything else
        would train silently on wrong targets."""
        y = self.labels
        if y.dtype not in MULTI_HOT_DTYPES:
            raise ValueError(f"multi-hot labels must be uint8, bool or float, got {y.dtype}")
        if y.shape[1] != len(self.classes):
            raise ValueError(f"multi-hot labels have {y.shape[1]} columns for {len(self.classes)} "
                             "class names")
        if y.numel() and not ((y == 0) | (y == 1)).all():
            raise ValueError("multi-hot labels must hold only 0 and 1")

    @property
    def multilabel(self) -> bool:
        """Whether every image carries a set of tags (multi-hot labels) rather than one class."""
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | np.ndarray) -> ImageArrays:
        index = torch.as_tensor(index, dtype=torch.long)
        sizes = None if self.sizes is None else self.sizes[index]
        return ImageArrays(self.images[index], self.labels[index], self.classes, sizes)

    def groups(self, order: torch.Tensor | None = None) -> list[tuple[tuple[int, int], torch.Tensor]]:
        """((h, w), indices) of each image size, indices in `order` (default: stored order);
        one group of every image when all share the tensor's size."""
        order = torch.arange(len(self)) if order is None else order
        if self.sizes is None:
            return [(tuple(self.images.shape[-2:]), order)]
        sizes = self.sizes[order]
        keys = sorted({(int(h), int(w)) for h, w in sizes.tolist()})
        return [(k, order[(sizes == torch.tensor(k)).all(1)]) for k in keys]

    def batch(self, index: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, labels) of images of one size: their own pixels, no canvas."""
        return self.images[index][..., :size[0], :size[1]], self.labels[index]

    def per_class(self, n: int, seed: int = 0) -> ImageArrays:
        """At most n images of each class, chosen at random with a fixed seed.

        Multi-label: images are taken in a seeded random order while none of their tags has n
        images yet (untagged images count as one more group), so no tag exceeds n; a tag that
        mostly appears beside a full one may end with fewer."""
        g = torch.Generator().manual_seed(seed)
        if self.multilabel:
            return self.subset(self._per_tag(n, g))
        keep = []
        for c in range(len(self.classes)):
            idx = (self.labels == c).nonzero().flatten()
            keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
        return self.subset(torch.cat(keep).sort().values)

    def _per_tag(self, n: int, g: torch.Generator) -> torch.Tensor:
        tags = self.labels.bool().numpy()
        counts = np.zeros(tags.shape[1] + 1, dtype=np.int64)  # the last: images without a tag
        keep = []
        for i in torch.randperm(len(self), generator=g).tolist():
            cols = np.flatnonzero(tags[i]) if tags[i].any() else np.array([tags.shape[1]])
            if (counts[cols] < n).all():
                counts[cols] += 1
                keep.append(i)
        return torch.tensor(sorted(keep), dtype=torch.long)


def iterate_eval(data, batch_size: int, workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (uint8 images, labels) in order, from arrays or a streaming folder: how
    evaluation, features and held-out losses read a data set."""
    if isinstance(data, ImageArrays) and data.sizes is not None:  # one size per batch
        for size, idx in data.groups():
            for i in range(0, len(idx), batch_size):
                yield data.batch(idx[i:i + batch_size], size)
    elif isinstance(data, ImageArrays):
        for i in range(0, len(data), batch_size):
            yield data.images[i:i + batch_size], data.labels[i:i + batch_size]
    else:
        yield from torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers)


def on_canvas(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, C, H, W) of same-sized images, or, when their sizes differ, a canvas of the largest
    height and width holding each top-left, and their (N, 2) sizes."""
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) <= 1:
        return torch.stack(images), None
    c = images[0].shape[0]
    h, w = max(t.shape[1] for t in images), max(t.shape[2] for t in images)
    canvas = torch.zeros(len(images), c, h, w, dtype=images[0].dtype)
    for i, t in enumerate(images):
        canvas[i, :, :t.shape[1], :t.shape[2]] = t
    return canvas, torch.tensor([t.shape[1:] for t in images], dtype=torch.long)


def labels_tensor(labels: list) -> torch.Tensor:
    """Labels of an index as ImageArrays holds them: class indices (N,) int64, or, where each is a
    0/1 tuple over the classes (multi-label), (N, K) uint8."""
    if labels and isinstance(labels[0], tuple | list):
        return torch.tensor(labels, dtype=torch.uint8).reshape(len(labels), -1)
    return torch.tensor(labels, dtype=torch.long)


def label_item(label: int | tuple) -> int | torch.Tensor:
    """One streamed sample's label: a class index, or a multi-hot (K,) uint8 vector."""
    return torch.tensor(label, dtype=torch.uint8) if isinstance(label, tuple | list) else label


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a fixed stratified train/test split. Multi-hot labels (N, K) get a plain seeded
    random split: stratifying on label sets would need every combination of tags twice."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    stratify = labels if np.ndim(labels) == 1 else None
    train, test = train_test_split(idx, test_size=test_fraction, stratify=stratify, random_state=seed)
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
