"""Image folders (root/<class>/<image>), read robustly.

Files that are not images are skipped with a warning that names them; so are images that
fail to decode (corrupt or truncated), found while the folder is cached or, for streamed
folders, when the folder is first checked. Small images are decoded once into a uint8
tensor cache on disk (safetensors), keyed by the file list, sizes and modification times.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from .arrays import ImageArrays
from .preprocess import image_to_uint8

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass
class FolderIndex:
    root: Path
    paths: list[Path]
    labels: list[int]
    classes: list[str]


def scan_folder(root: str | Path, classes: list[str] | None = None) -> FolderIndex:
    """List root/<class>/<file>; classes are the sorted subdirectory names unless given."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such directory")
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory (expected root/<class>/<image> folders)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
    elif set(found) - set(classes):
        raise ValueError(f"{root}: classes {sorted(set(found) - set(classes))} are not among the model's "
                         f"classes {classes}")
    if not classes:
        raise ValueError(f"{root}: no class subdirectories (expected root/<class>/<image>)")
    paths, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        d = root / name
        if not d.is_dir():
            continue
        for dirpath, _, files in os.walk(d):
            for f in sorted(files):
                p = Path(dirpath) / f
                if f.startswith("."):
                    continue
                if p.suffix.lower() in IMAGE_EXTENSIONS:
                    paths.append(p)
                    labels.append(label)
                else:
                    skipped.append(p)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} non-image file(s) in {root}: "
                      + ", ".join(str(p.relative_to(root)) for p in skipped[:10]), stacklevel=2)
    if not paths:
        raise ValueError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return FolderIndex(root, paths, labels, list(classes))


def probe(index: FolderIndex, n: int = 64) -> tuple[tuple[int, int], int]:
    """Most common (H, W) and the channel count (1 if every probed image is grayscale)."""
    step = max(1, len(index.paths) // n)
    sizes, gray = Counter(), True
    for p in index.paths[::step][:n]:
        try:
            with Image.open(p) as im:
                sizes[(im.height, im.width)] += 1
                gray &= im.mode in GRAY_MODES
        except _DECODE_ERRORS:
            continue
    if not sizes:
        raise ValueError(f"{index.root}: none of the probed images could be opened")
    return sizes.most_common(1)[0][0], 1 if gray else 3


def _decode(args: tuple[str, int, tuple[int, int] | None]) -> torch.Tensor | None:
    path, channels, size = args
    try:
        with Image.open(path) as im:
            im.load()
            return image_to_uint8(im, channels, size)
    except _DECODE_ERRORS:
        return None


def _decode_numpy(args: tuple[str, int, tuple[int, int] | None]):
    t = _decode(args)
    return None if t is None else t.numpy()


def _cache_key(index: FolderIndex, channels: int, size: tuple[int, int]) -> str:
    h = hashlib.sha256(f"{index.root.resolve()}|{channels}|{size}|{index.classes}".encode())
    for p, y in zip(index.paths, index.labels, strict=True):
        st = p.stat()
        h.update(f"{p.relative_to(index.root)}|{y}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitkit"


def load_folder_cached(index: FolderIndex, channels: int, size: tuple[int, int],
                       cache_dir: str | Path | None = None, workers: int = 2) -> ImageArrays:
    """Decode every image once (resized to size) into uint8 tensors, cached on disk."""
    from safetensors.torch import load_file, save

    from ..checkpoint import atomic_write_bytes

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    file = cache / f"folder-{_cache_key(index, channels, size)}.safetensors"
    if file.is_file():
        try:
            t = load_file(str(file))
            return ImageArrays(t["images"], t["labels"], index.classes)
        except Exception:  # a damaged cache is rebuilt, never trusted
            warnings.warn(f"ignoring unreadable cache {file}", stacklevel=2)
    jobs = [(str(p), channels, size) for p in index.paths]
    if workers > 1 and len(jobs) > 256:
        # workers hand back NumPy arrays: plain pickled bytes, not shared-memory tensors,
        # which would need one file descriptor each
        with ProcessPoolExecutor(workers) as pool:
            decoded = [None if a is None else torch.from_numpy(a)
                       for a in pool.map(_decode_numpy, jobs, chunksize=256)]
    else:
        decoded = [_decode(j) for j in jobs]
    bad = [index.paths[i] for i, t in enumerate(decoded) if t is None]
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {index.root}: "
                      + ", ".join(str(p.relative_to(index.root)) for p in bad[:10]), stacklevel=2)
    keep = [i for i, t in enumerate(decoded) if t is not None]
    if not keep:
        raise ValueError(f"{index.root}: none of the {len(jobs)} images could be decoded")
    images = torch.stack([decoded[i] for i in keep])
    labels = torch.tensor([index.labels[i] for i in keep], dtype=torch.long)
    try:
        atomic_write_bytes(file, save({"images": images, "labels": labels}))
    except OSError as e:
        warnings.warn(f"could not write cache {file}: {e}", stacklevel=2)
    return ImageArrays(images, labels, index.classes)


class StreamingFolder(torch.utils.data.Dataset):
    """Decodes each image when it is asked for (in DataLoader workers), for large images.

    A file that fails to decode is replaced by the next good one and named in a warning, so
    an epoch never stops half-way.
    """

    def __init__(self, index: FolderIndex, channels: int, transform):
        self.index, self.channels, self.transform = index, channels, transform
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.index.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        for j in range(len(self)):
            k = (i + j) % len(self)
            if k in self.bad:
                continue
            img = _decode((str(self.index.paths[k]), self.channels, None))
            if img is not None:
                return self.transform(img), self.index.labels[k]
            self.bad.add(k)
            warnings.warn(f"skipping unreadable image {self.index.paths[k]}", stacklevel=2)
        raise ValueError(f"{self.index.root}: no readable images")
