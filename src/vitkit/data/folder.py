"""Image folders (root/<class>/<image>), read robustly.

Files that are not images are skipped with a warning that names them; so are images that
fail to decode (corrupt or truncated), found while the folder is cached or, for streamed
folders, when they are read, and links that lead nowhere (dangling or looping), found while
the folder is scanned. A class folder without any image is not a class: it is skipped
with a warning. Every such warning is a one-line VitkitWarning. Images whose decoded copies
fit the memory budget (vitkit.data.inputs.should_cache) are decoded once (upright: data/preprocess.py's
open_image), in parallel, into a uint8 tensor cache on disk (safetensors), keyed by the file
list, sizes and modification times; the cache names the images that failed to decode, so a
run that reads it warns about them as the run that wrote it did.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..cache import default_cache_dir
from ..notices import VitkitWarning, one_line
from .arrays import ImageArrays, label_item, labels_tensor, on_canvas
from .preprocess import DECODING, Fit, image_to_uint8, open_image, upright_size

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


UNLABELLED = "(unlabelled)"  # the one class of a folder of images without class subfolders


@dataclass
class FolderIndex:
    root: Path
    paths: list[Path]
    labels: list[int]
    classes: list[str]


def _names(root: Path, paths: list[Path], limit: int = 10) -> str:
    """"a/x.txt, b/y.png and 3 more": file names relative to root, on one line."""
    shown = ", ".join(one_line(p.relative_to(root)) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _unreadable(root: Path, bad: list[Path], why: str = "corrupt or truncated") -> str:
    """The one warning for images that are skipped because they cannot be read."""
    return f"{one_line(root)}: skipped {len(bad)} unreadable image(s) ({why}): {_names(root, bad)}"


BROKEN_LINKS = "links to nothing or to themselves"


def is_broken_link(p: Path) -> bool:
    """A symbolic link whose target cannot be reached (dangling, or looping back on itself):
    opening or stat-ing it raises OSError, so it is skipped as an unreadable image."""
    try:
        os.stat(p)
        return False
    except OSError:
        return os.path.islink(p)


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and the image files inside any directory (sorted, recursive). Links in a
    directory that lead nowhere (dangling or looping) are skipped with one warning naming them."""
    out = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
            broken = [f for f in found if f.is_symlink() and is_broken_link(f)]
            if broken:
                warnings.warn(_unreadable(p, broken, BROKEN_LINKS), VitkitWarning, stacklevel=2)
                skip = set(broken)
                found = [f for f in found if f not in skip]
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    if not out:
        raise ValueError(f"no images found in {', '.join(map(str, inputs))}")
    return out


def _image_files(d: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(image files, other files, image names that are broken links) under d, in a fixed order
    (a folder's files, then its subfolders'); hidden files and folders are ignored. Links to
    files are followed, links to folders are not entered (as os.walk)."""
    images: list[Path] = []
    others: list[Path] = []
    broken: list[Path] = []

    def walk(top: str) -> None:
        try:
            with os.scandir(top) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:  # as os.walk: a folder that cannot be listed holds nothing
            return
        subdirs = []
        for e in entries:
            try:
                is_dir = e.is_dir()  # follows links; a broken one is not a folder
            except OSError:
                is_dir = False
            if is_dir:
                if not e.is_symlink():
                    subdirs.append(e.path)
                continue
            p = Path(e.path)
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                others.append(p)
            elif e.is_symlink() and is_broken_link(p):  # a stat for links only
                broken.append(p)
            else:
                images.append(p)
        for sub in subdirs:
            walk(sub)

    walk(str(d))
    return images, others, broken


# Subfolders that name splits, not classes; the first validation name present is used.
TRAIN_SPLIT = "train"
VAL_SPLITS = ("val", "validation", "valid", "test")


def split_folders(root: str | Path) -> tuple[Path, Path | None] | None:
    """(train, validation) when root is split into folders (root/train/<class>/..., beside it
    root/val, validation, valid or test, or none) rather than holding class folders; else None.
    A folder holding nothing but split names is read as splits: as classes "train" and "val"
    would teach the model which split an image came from."""
    root = Path(root)
    if not root.is_dir():
        return None
    names = {d.name.lower(): d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    if TRAIN_SPLIT not in names or not set(names) <= {TRAIN_SPLIT, *VAL_SPLITS}:
        return None
    return names[TRAIN_SPLIT], next((names[n] for n in VAL_SPLITS if n in names), None)


def scan_folder(root: str | Path, classes: list[str] | None = None,
                classes_of: str = "the model") -> FolderIndex:
    """List root/<class>/<file>; classes are the sorted subdirectory names unless given.

    A folder with no subfolders but images of its own is read as unlabelled images: one class,
    UNLABELLED (pre-training uses such folders; supervised training refuses them). A class
    folder holding no image is skipped with a warning: it is not a class. Given
    classes (a model's, or those of the training folder, named by classes_of) fix the labels;
    a folder of images whose name is not among them is an error, while given classes without
    a folder are fine.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such directory")
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory (expected root/<class>/<image> folders)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        images, _, broken = _image_files(root)
        if broken:
            warnings.warn(_unreadable(root, broken, BROKEN_LINKS), VitkitWarning, stacklevel=2)
        if not images:
            raise ValueError(f"{root}: no class subdirectories and no images (expected root/<class>/<image>)")
        if classes is not None and UNLABELLED not in classes:
            raise ValueError(f"{one_line(root)}: images without class subfolders, while {classes_of} has "
                             f"{len(classes)} classes (expected root/<class>/<image>)")
        label = classes.index(UNLABELLED) if classes is not None else 0
        return FolderIndex(root, images, [label] * len(images), list(classes or [UNLABELLED]))
    files: dict[str, list[Path]] = {}
    skipped: list[Path] = []
    broken: list[Path] = []
    for name in found:
        images, others, links = _image_files(root / name)
        skipped += others
        broken += links
        if images:
            files[name] = images
        else:
            warnings.warn(f"{one_line(root / name)}: no images; skipped, not a class", VitkitWarning,
                          stacklevel=2)
    if skipped:
        warnings.warn(f"{one_line(root)}: skipped {len(skipped)} non-image file(s): {_names(root, skipped)}",
                      VitkitWarning, stacklevel=2)
    if broken:
        warnings.warn(_unreadable(root, broken, BROKEN_LINKS), VitkitWarning, stacklevel=2)
    if not files:
        looked_for = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"{one_line(root)}: no images found in any of its {len(found)} class folder(s) "
                         f"(looked for {looked_for})")
    if classes is None:
        classes = list(files)
    else:
        unknown = [n for n in files if n not in set(classes)]
        if unknown:
            preview = ", ".join(one_line(c) for c in classes[:10]) + (", ..." if len(classes) > 10 else "")
            names = ", ".join(one_line(n) for n in unknown)
            raise ValueError(f"{one_line(root)}: class folder(s) {names} not among {classes_of}'s "
                             f"{len(classes)} classes ({preview})")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for p in files.get(name, []):
            paths.append(p)
            labels.append(label)
    return FolderIndex(root, paths, labels, list(classes))


def probe_images(files, where: str) -> tuple[tuple[int, int], int]:
    """Most common (H, W) of `files` (paths or binary streams) and the channel count (1 if every
    one is grayscale); unreadable ones are passed over, none readable is an error naming `where`.
    Sizes are upright (EXIF orientation applied), read from the headers without decoding."""
    sizes, gray = Counter(), True
    for f in files:
        try:
            with Image.open(f) as im:
                w, h = upright_size(im)
                sizes[(h, w)] += 1
                gray &= im.mode in GRAY_MODES
        except _DECODE_ERRORS:
            continue
    if not sizes:
        raise ValueError(f"{where}: none of the probed images could be opened")
    return sizes.most_common(1)[0][0], 1 if gray else 3


def probe(index: FolderIndex, n: int = 64) -> tuple[tuple[int, int], int]:
    """Most common (H, W) and channel count of n images spread over the folder."""
    step = max(1, len(index.paths) // n)
    return probe_images(index.paths[::step][:n], str(index.root))


def _decode(args: tuple[str, int, tuple[int, int] | Fit | None]) -> torch.Tensor | None:
    path, channels, size = args
    try:
        with open_image(path) as im:
            return image_to_uint8(im, channels, size)
    except _DECODE_ERRORS:
        return None


def _decode_numpy(args: tuple[str, int, tuple[int, int] | Fit | None]):
    t = _decode(args)
    return None if t is None else t.numpy()


def file_stamp(p: str | Path) -> str:
    """"size|mtime" of a file for cache keys; "unreadable" when it cannot be stat-ed (gone since
    it was listed, or a broken link), which fails to decode and is skipped like any bad image."""
    try:
        st = os.stat(p)
    except OSError:
        return "unreadable"
    return f"{st.st_size}|{st.st_mtime_ns}"


def _cache_key(index: FolderIndex, channels: int, size: tuple[int, int] | Fit) -> str:
    """The decoded cache's name: DECODING changes it whenever decoding does (e.g. images turned
    upright), so that no cache of other pixels is read."""
    h = hashlib.sha256(f"{DECODING}|{index.root.resolve()}|{channels}|{size}|{index.classes}".encode())
    for p, y in zip(index.paths, index.labels, strict=True):
        h.update(f"{p.relative_to(index.root)}|{y}|{file_stamp(p)}\n".encode())
    return h.hexdigest()[:24]


def read_decoded_cache(file: Path) -> tuple[torch.Tensor, torch.Tensor, dict, torch.Tensor | None] | None:
    """(images, labels, metadata, sizes) of a decoded cache file (sizes: ImageArrays.sizes, None
    when the images share one), or None when there is none; a damaged one is named in a
    warning and None returned, so it is rebuilt, never trusted."""
    from safetensors import safe_open

    if not file.is_file():
        return None
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            images, labels = f.get_tensor("images"), f.get_tensor("labels")
            sizes = f.get_tensor("sizes") if "sizes" in f.keys() else None
        json.loads(meta.get("unreadable", "[]"))
    except Exception:
        warnings.warn(f"{one_line(file)}: unreadable cache, ignored and rebuilt", VitkitWarning, stacklevel=3)
        return None
    return images, labels, meta, sizes


def write_decoded_cache(file: Path, images: torch.Tensor, labels: torch.Tensor, meta: dict[str, str],
                        sizes: torch.Tensor | None = None) -> None:
    """Write a decoded cache atomically; a cache that cannot be written is a warning, not an error."""
    from safetensors.torch import save

    from ..files import atomic_write_bytes

    tensors = {"images": images, "labels": labels} | ({} if sizes is None else {"sizes": sizes})
    try:
        atomic_write_bytes(file, save(tensors, metadata=meta))
    except OSError as e:
        warnings.warn(f"{one_line(file)}: could not write cache ({one_line(e)})", VitkitWarning, stacklevel=3)


def load_folder_cached(index: FolderIndex, channels: int, size: tuple[int, int] | Fit,
                       cache_dir: str | Path | None = None, workers: int = 2) -> ImageArrays:
    """Decode every image once (resized to size; a Fit of resize "keep": each to a size of its
    own, ImageArrays.sizes) into uint8 tensors, cached on disk.

    The images that fail to decode are named in a warning, and in the cache's metadata
    ("unreadable": a JSON list of paths relative to the root), so reading the cache warns again.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    file = cache / f"folder-{_cache_key(index, channels, size)}.safetensors"
    cached = read_decoded_cache(file)
    if cached is not None:
        images, labels, meta, sizes = cached
        unread = [index.root / r for r in json.loads(meta.get("unreadable", "[]"))]
        if unread:
            warnings.warn(_unreadable(index.root, unread), VitkitWarning, stacklevel=2)
        return ImageArrays(images, labels, index.classes, sizes)
    from tqdm import tqdm

    jobs = [(str(p), channels, size) for p in index.paths]
    bar = dict(total=len(jobs), desc=f"decoding {len(jobs)} images to {size[0]}x{size[1]}", unit="img",
               leave=False, disable=None)  # a bar on terminals only
    if workers > 1 and len(jobs) >= 64:
        # workers hand back NumPy arrays: plain pickled bytes, not shared-memory tensors,
        # which would need one file descriptor each
        chunk = max(1, min(256, len(jobs) // (4 * workers)))
        with ProcessPoolExecutor(workers) as pool:
            decoded = [None if a is None else torch.from_numpy(a)
                       for a in tqdm(pool.map(_decode_numpy, jobs, chunksize=chunk), **bar)]
    else:
        decoded = [_decode(j) for j in tqdm(jobs, **bar)]
    bad = [index.paths[i] for i, t in enumerate(decoded) if t is None]
    if bad:
        warnings.warn(_unreadable(index.root, bad), VitkitWarning, stacklevel=2)
    keep = [i for i, t in enumerate(decoded) if t is not None]
    if not keep:
        raise ValueError(f"{index.root}: none of the {len(jobs)} images could be decoded")
    images, sizes = on_canvas([decoded[i] for i in keep])
    labels = labels_tensor([index.labels[i] for i in keep])
    meta = {"unreadable": json.dumps([p.relative_to(index.root).as_posix() for p in bad])}
    write_decoded_cache(file, images, labels, meta, sizes)
    return ImageArrays(images, labels, index.classes, sizes)


def _readable(path: str) -> bool:
    try:
        with open_image(path):
            return True
    except _DECODE_ERRORS:
        return False


def readable_only(index: FolderIndex, workers: int = 2) -> FolderIndex:
    """The index without the images that fail to decode, which are named in one warning.

    Each image is decoded once, so that a streamed pass over the result sees every image
    exactly once (StreamingFolder would stand a good image in for a bad one).
    """
    jobs = [str(p) for p in index.paths]
    if workers > 1 and len(jobs) > 256:
        with ProcessPoolExecutor(workers) as pool:
            ok = list(pool.map(_readable, jobs, chunksize=64))
    else:
        ok = [_readable(j) for j in jobs]
    bad = [p for p, good in zip(index.paths, ok, strict=True) if not good]
    if bad:
        warnings.warn(_unreadable(index.root, bad), VitkitWarning, stacklevel=2)
    if len(bad) == len(jobs):
        raise ValueError(f"{one_line(index.root)}: none of the {len(jobs)} images could be decoded")
    keep = [i for i, good in enumerate(ok) if good]
    return FolderIndex(index.root, [index.paths[i] for i in keep], [index.labels[i] for i in keep],
                       index.classes)


class StreamingFolder(torch.utils.data.Dataset):
    """Decodes each image when it is asked for (in DataLoader workers), for large images.

    Images are resized to `size` on decoding when it is given (as for prediction), then passed
    through `transform` when there is one. A file that fails to decode is replaced by the next
    good one and named in a warning, so an epoch never stops half-way.
    """

    def __init__(self, index: FolderIndex, channels: int, transform=None,
                 size: tuple[int, int] | None = None):
        self.index, self.channels, self.transform = index, channels, transform
        self.size = size if size is None or isinstance(size, Fit) else (int(size[0]), int(size[1]))
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.index.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        for j in range(len(self)):
            k = (i + j) % len(self)
            if k in self.bad:
                continue
            img = _decode((str(self.index.paths[k]), self.channels, self.size))
            if img is not None:
                return ((self.transform(img) if self.transform is not None else img),
                        label_item(self.index.labels[k]))
            self.bad.add(k)
            warnings.warn(f"{one_line(self.index.paths[k])}: unreadable image (corrupt or truncated), "
                          "skipped", VitkitWarning, stacklevel=2)
        raise ValueError(f"{one_line(self.index.root)}: no readable images")
