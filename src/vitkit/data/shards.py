"""Images streamed from WebDataset-style tar shards, read with the standard library's tarfile.

A shard set written by ``vitkit shards`` is a directory (or a URL prefix) holding

- ``shard-000000.tar``, ``shard-000001.tar``, ...: each sample is ``<key>.<ext>`` (the image
  file's bytes, as they were) and ``<key>.cls`` (the class index as text), the layout the
  `webdataset` package reads;
- ``index.json``: the class names and each shard's name and sample count.

Shards written by other tools are read as they are: the `webdataset` package's
TarWriter/ShardWriter, ``tarp``, img2dataset, or any tar whose samples are consecutive
members sharing a key (the path up to the first dot of the base name, as webdataset groups
them; extensions are matched case-insensitively). A sample's image is its first ``.jpg``,
``.jpeg``, ``.png``, ``.webp`` (or other image) member; its label is, in this order of
precedence, ``.cls`` (a class index as text), a field of ``.json`` (the first of label, cls,
class, target, labels that holds a usable value), or ``.txt`` (a class index or name):
explicit label members first, since img2dataset's ``.txt`` is a caption. Text that is a
whole number is a class index; a negative one means "no label". Without index.json,
`open_shards` takes a directory or URL prefix (its ``.tar``, ``.tgz``, ``.tar.gz`` files,
from a plain HTML listing for URLs), a brace or glob pattern (``dir/shard-{000000..000009}.tar``,
``dir/*.tar``), or one shard, and reads every shard once (member headers and the small label
members only) to count the samples and collect the labels; nothing is written beside the
shards, so that scan is repeated on each run. Class names come from a ``classes.txt`` (one
name per line, in index order) or ``classes.json`` (a list, or a name -> index mapping)
beside the shards when there is one; else integer labels 0..K-1 are named "0".."K-1"
(K = the largest + 1) and string labels are the sorted distinct names. A sample with an
image but no label, or a label but no image, is skipped and not counted, with one
VitkitWarning per kind naming the shards and keys; a set whose labels mix indices and names
needs a classes file.

The counts are what makes the epochs exact: they count the samples the reader yields (an
image and a label), and an epoch is a pure function of (seed, epoch):
the shards in a shuffled order, their samples concatenated, the first
floor(total / global batch) x global batch of them used. That stream is cut into equal
contiguous parts, one per rank, and each rank's part into whole batches per DataLoader worker,
so every rank yields the same number of batches (no rank waits at the end of an epoch for
another's gradients) and every used image is seen exactly once, whatever the number of
workers. Each worker shuffles within its part through a seeded buffer.

Shards are read sequentially (local files, http(s) URLs, or ``pipe:COMMAND`` whose standard
output is the tar stream), so they can live on object storage; a worker opens only the
shards its part touches.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import re
import subprocess
import tarfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..notices import VitkitWarning, first_line, one_line
from .folder import _DECODE_ERRORS, IMAGE_EXTENSIONS, FolderIndex
from .preprocess import Fit, image_to_uint8, open_image

INDEX_NAME = "index.json"
CLASS_FILES = ("classes.txt", "classes.json")
SHARD_SUFFIXES = (".tar", ".tgz", ".tar.gz")
IMAGE_EXTS = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)
LABEL_EXTS = ("cls", "json", "txt")  # label members, by precedence
JSON_LABEL_KEYS = ("label", "cls", "class", "target", "labels")

_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # (key, extension), as webdataset's base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")  # members webdataset skips (__meta__ files and folders)
_INDEX = re.compile(r"[+-]?\d+")
_BRACE = re.compile(r"\{([^{}]*)\}")

Label = int | str  # a class index, or a class name


@dataclass
class ShardSet:
    """Where the shards are, how many samples each holds, and the class names."""

    base: str  # a directory, a URL prefix, or "" when the names are full locations
    names: list[str]
    counts: list[int]
    classes: list[str]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def location(self, i: int) -> str:
        name = self.names[i]
        if not self.base or name.startswith(("pipe:", "http://", "https://", "/")):
            return name
        return f"{self.base.rstrip('/')}/{name}"


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _is_local(location: str) -> bool:
    return not _is_url(location) and not location.startswith("pipe:")


def _read_text(location: str) -> str:
    if _is_url(location):
        with urllib.request.urlopen(location) as r:  # noqa: S310 (the user's own URL)
            return r.read().decode()
    return Path(location).read_text()


def _read_optional(location: str) -> str | None:
    """The text at location, or None where there is nothing (a missing file, HTTP 403 or 404:
    object stores answer 403 for a missing key without list rights)."""
    try:
        return _read_text(location)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except urllib.error.HTTPError as e:
        if e.code in (403, 404):
            return None
        raise


def open_shards(path: str) -> ShardSet:
    """The shard set at `path`: a directory or URL prefix (with index.json, or its shards are
    listed and scanned), the index file itself, a brace or glob pattern of shards, one shard,
    or a ``pipe:`` command (braces expanded)."""
    if path.endswith(".json"):
        try:
            return _indexed(path, json.loads(_read_text(path)))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no shard index (write shards with `vitkit shards SRC OUT`)"
                                    ) from None
    prefix = _is_url(path) and not _is_pattern(path) and not path.endswith(SHARD_SUFFIXES)
    if prefix or (_is_local(path) and Path(path).is_dir()):
        index = f"{path.rstrip('/')}/{INDEX_NAME}"
        text = _read_optional(index)
        if text is not None:
            return _indexed(index, json.loads(text))
        base = path.rstrip("/") or "/"
        return _scanned(path, base, _listing(path), base)
    return _scanned(path, "", _expand(path), None if path.startswith("pipe:") else _beside(path))


def _indexed(index: str, meta: dict) -> ShardSet:
    """The shard set an index.json describes (`vitkit shards`)."""
    base = index.rsplit("/", 1)[0] if "/" in index else "."
    shards = meta["shards"]
    return ShardSet(base, [s["name"] for s in shards], [int(s["count"]) for s in shards],
                    list(meta["classes"]))


def _is_pattern(path: str) -> bool:
    braces = any("," in b or ".." in b for b in _BRACE.findall(path))
    return braces or (_is_local(path) and any(c in path for c in "*?["))


def _braces(pattern: str) -> list[str]:
    """Brace expansion as webdataset's (braceexpand): {000..009} keeps the zero padding,
    {a,b} lists alternatives."""
    m = next((m for m in _BRACE.finditer(pattern) if "," in m.group(1) or ".." in m.group(1)), None)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    r = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if r:
        a, b = r.groups()
        padded = any(s.lstrip("-").startswith("0") and s.lstrip("-") != "0" for s in (a, b))
        width = max(len(a), len(b)) if padded else 0
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        alternatives = [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
    else:
        alternatives = body.split(",")
    return [s for alt in alternatives for s in _braces(head + alt + tail)]


def _expand(path: str) -> list[str]:
    """The shard locations a pattern names, in its order (glob matches sorted); local ones
    must exist."""
    out: list[str] = []
    for p in _braces(path):
        out += sorted(glob.glob(p)) if _is_local(p) and any(c in p for c in "*?[") else [p]
    if not out:
        raise FileNotFoundError(f"{one_line(path)}: no shards match")
    missing = [p for p in out if _is_local(p) and not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{one_line(missing[0])}: no such shard ({len(missing)} of the {len(out)} "
                                f"named by {one_line(path)} missing)")
    return out


def _beside(pattern: str) -> str:
    """The directory (or URL prefix) a pattern's shards are in: where a classes file would be."""
    specials = "{" if _is_url(pattern) else "{*?["
    cut = min((i for i in (pattern.find(c) for c in specials) if i >= 0), default=len(pattern))
    fixed = pattern[:cut]
    return (fixed.rsplit("/", 1)[0] or "/") if "/" in fixed else "."


def _listing(path: str) -> list[str]:
    """The shard file names in a directory, or in a URL prefix's HTML listing (a plain web
    server's; object stores give none: name the shards with a brace pattern there)."""
    if _is_url(path):
        page = _read_optional(path.rstrip("/") + "/") or ""
        hrefs = {h.split("?")[0].rstrip("/").rsplit("/", 1)[-1] for h in re.findall(r'href="([^"]+)"', page)}
        names = sorted(h for h in hrefs if h.endswith(SHARD_SUFFIXES))
        where = "no index.json and no .tar shards in its listing (name them with a brace pattern, " \
                "e.g. URL/shard-{000000..000099}.tar)"
    else:
        names = sorted(p.name for p in Path(path).iterdir()
                       if p.is_file() and p.name.endswith(SHARD_SUFFIXES) and not p.name.startswith("."))
        where = "no index.json and no .tar shards"
    if not names:
        raise FileNotFoundError(f"{one_line(path)}: {where} (write shards with `vitkit shards SRC OUT`, "
                                "or webdataset's ShardWriter)")
    return names


def _open_stream(location: str):
    """A readable binary stream of the tar file at location, and a function that closes it."""
    if location.startswith("pipe:"):
        p = subprocess.Popen(location[5:], shell=True, stdout=subprocess.PIPE)  # noqa: S602 (user's command)

        def close():
            p.stdout.close()
            p.wait()
        return p.stdout, close
    if _is_url(location):
        r = urllib.request.urlopen(location)  # noqa: S310
        return r, r.close
    f = open(location, "rb")  # noqa: SIM115
    return f, f.close


@contextmanager
def _open_tar(location: str) -> Iterator[tarfile.TarFile]:
    """The tar at location, its members read in order: a local file seeks over the data it
    does not read; other locations are one stream (compressed ones too)."""
    if _is_local(location):
        with tarfile.open(location, "r:*") as tar:
            yield tar
        return
    stream, close = _open_stream(location)
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            yield tar
    finally:
        close()


@dataclass
class _Sample:
    """The members of one sample that matter here, as they come out of the tar."""

    key: str
    want: bool  # whether its image bytes are read
    has_image: bool = False
    image: bytes | None = None
    labels: dict[str, bytes] = field(default_factory=dict)


def _samples(tar: tarfile.TarFile, want: Callable[[], bool]) -> Iterator[_Sample]:
    """The samples of a tar as webdataset groups them: consecutive members of one key (every
    regular file counts for the grouping). Label members are always read (they are small); the
    first image member's bytes only where want() says so when the sample starts."""
    sample: _Sample | None = None
    for member in tar:
        if not member.isreg() or _META.match(member.name):
            continue
        m = _NAME.match(member.name)
        if m is None:
            continue
        key, ext = m.group(1), m.group(2).lower()
        if sample is None or key != sample.key:
            if sample is not None:
                yield sample
            sample = _Sample(key, want())
        if ext in LABEL_EXTS:
            if ext not in sample.labels:
                sample.labels[ext] = tar.extractfile(member).read()
        elif ext in IMAGE_EXTS and not sample.has_image:
            sample.has_image = True
            if sample.want:
                sample.image = tar.extractfile(member).read()
    if sample is not None:
        yield sample


def _text_label(text: str) -> Label | None:
    s = text.strip()
    if not s:
        return None
    if _INDEX.fullmatch(s):
        return int(s) if int(s) >= 0 else None
    return s


def _json_value(v) -> Label | None:
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, bool):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int):
        return v if v >= 0 else None
    return _text_label(v) if isinstance(v, str) else None


def _json_label(data: bytes) -> Label | None:
    """The first usable value among a .json member's label keys (label, cls, class, target, labels)."""
    try:
        meta = json.loads(data)
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    values = (_json_value(meta[k]) for k in JSON_LABEL_KEYS if k in meta)
    return next((v for v in values if v is not None), None)


def _label(members: dict[str, bytes]) -> Label | None:
    """A sample's label from its label members, by precedence (.cls, .json, .txt)."""
    for ext in LABEL_EXTS:
        data = members.get(ext)
        if data is None:
            continue
        value = _json_label(data) if ext == "json" else _text_label(data.decode("utf-8", "replace"))
        if value is not None:
            return value
    return None


def read_shard(location: str, skip: int = 0, take: int | None = None, classes: list[str] | None = None
               ) -> Iterator[tuple[str, bytes, int]]:
    """(key, image bytes, label) of samples skip .. skip + take - 1 of one shard, in order.

    A sample is one with an image and a label that resolves: an index (below len(classes)
    when classes are given), or a name among classes; the rest are passed over uncounted, as
    the scan that counted the shard did."""
    names = {c: i for i, c in enumerate(classes or [])}

    def resolve(value: Label | None) -> int | None:
        if isinstance(value, int):
            return value if classes is None or value < len(classes) else None
        return names.get(value) if value is not None else None

    n = 0

    def wanted() -> bool:  # skipped samples' image bytes are never read
        return n >= skip

    with _open_tar(location) as tar:
        for s in _samples(tar, wanted):
            label = resolve(_label(s.labels)) if s.has_image else None
            if label is None:
                continue
            if n >= skip:
                yield s.key, s.image, label
            n += 1
            if take is not None and n >= skip + take:
                return


@dataclass
class _Scan:
    """One shard's samples as counted: how many, their labels (each with a key holding it),
    and the keys of those skipped."""

    count: int = 0
    labels: dict[Label, str] = field(default_factory=dict)  # each label, and a key holding it
    no_label: list[str] = field(default_factory=list)
    no_image: list[str] = field(default_factory=list)


def _scan(location: str) -> _Scan:
    scan = _Scan()
    try:
        with _open_tar(location) as tar:
            for s in _samples(tar, lambda: False):
                value = _label(s.labels)
                if s.has_image and value is not None:
                    scan.count += 1
                    scan.labels.setdefault(value, s.key)
                elif s.has_image:
                    scan.no_label.append(s.key)
                elif value is not None:
                    scan.no_image.append(s.key)
    except tarfile.TarError as e:
        raise ValueError(f"{one_line(location)}: not a readable tar shard ({first_line(e)})") from e
    return scan


def _class_file(beside: str) -> tuple[str, list[str]] | None:
    """(file, class names) from a classes.txt or classes.json in beside, if there is one."""
    for name in CLASS_FILES:
        where = f"{beside.rstrip('/')}/{name}"
        text = _read_optional(where)
        if text is None:
            continue
        if name.endswith(".txt"):
            names = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            if isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):
                by_index = {v: k for k, v in data.items()}
                names = [by_index.get(i) for i in range(len(data))]
            else:
                names = data
            if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
                raise ValueError(f"{one_line(where)}: expected a list of class names or a name -> index "
                                 f"mapping (indices 0..K-1)")
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"{one_line(where)}: class names must be distinct, at least one")
        return where, names
    return None


def _classes(where: str, labels: dict[Label, str], named: tuple[str, list[str]] | None) -> list[str]:
    """The class names of a scanned set; labels maps each label to a "shard key" holding it."""
    indices = sorted(v for v in labels if isinstance(v, int))
    strings = sorted(v for v in labels if isinstance(v, str))
    if named is not None:
        file, names = named
        known = set(names)
        bad = [v for v in indices if v >= len(names)] + [v for v in strings if v not in known]
        if bad:
            raise ValueError(f"{one_line(where)}: label {one_line(repr(bad[0]))} (sample "
                             f"{one_line(labels[bad[0]])}) is not one of the {len(names)} classes of "
                             f"{one_line(file)}")
        return list(names)
    if indices and strings:
        raise ValueError(f"{one_line(where)}: labels mix class indices ({indices[0]}, sample "
                         f"{one_line(labels[indices[0]])}) and names ({one_line(repr(strings[0]))}, sample "
                         f"{one_line(labels[strings[0]])}); put a classes.txt (one name per line, in index "
                         "order) beside the shards")
    if strings:
        return strings
    return [str(i) for i in range(indices[-1] + 1)]


def _keys(found: list[tuple[str, str]], limit: int = 5) -> str:
    shown = ", ".join(f"{one_line(name)} {one_line(key)}" for name, key in found[:limit])
    return shown + (f" and {len(found) - limit} more" if len(found) > limit else "")


def _scan_all(locations: list[str]) -> list[_Scan]:
    """Every shard's scan, in order. Parsing tar headers is CPU-bound (about half a millisecond
    a sample for webdataset's pax headers), so many shards are spread over processes; a few
    go through threads, which cost nothing to start."""
    procs = min(len(locations), 8, os.cpu_count() or 1)
    if len(locations) < 4 or procs < 2:
        with ThreadPoolExecutor(min(8, len(locations))) as pool:
            return list(pool.map(_scan, locations))
    with ProcessPoolExecutor(procs) as pool:
        return list(pool.map(_scan, locations))


def _scanned(where: str, base: str, names: list[str], beside: str | None) -> ShardSet:
    """The shard set of shards without an index: each read once, several at a time."""
    locations = [ShardSet(base, names, [], []).location(i) for i in range(len(names))]
    scans = _scan_all(locations)
    total = sum(s.count for s in scans)
    if not total:
        unlabelled = sum(len(s.no_label) for s in scans)
        raise ValueError(f"{one_line(where)}: no sample in its {len(names)} shard(s) has both an image "
                         f"(.jpg, .png, .webp, ...) and a label (.cls, a label field of .json, or .txt)"
                         + (f"; {unlabelled} image(s) without a label" if unlabelled else ""))
    labels: dict[Label, str] = {}
    for name, s in zip(names, scans, strict=True):
        for value, key in s.labels.items():
            labels.setdefault(value, f"{name} {key}")
    classes = _classes(where, labels, _class_file(beside) if beside is not None else None)
    for what, kind in (("no_label", "without a label (.cls, a label field of .json, or .txt)"),
                       ("no_image", "without an image (.jpg, .png, .webp, ...)")):
        found = [(name, key) for name, s in zip(names, scans, strict=True) for key in getattr(s, what)]
        if found:
            warnings.warn(f"{one_line(where)}: skipped {len(found)} sample(s) {kind}, not counted: "
                          f"{_keys(found)}", VitkitWarning, stacklevel=3)
    keep = [i for i, s in enumerate(scans) if s.count]
    return ShardSet(base, [names[i] for i in keep], [scans[i].count for i in keep], classes)


def epoch_plan(counts: list[int], epoch: int, seed: int, global_batch: int, shuffle: bool = True,
               drop_last: bool = True) -> tuple[list[int], int]:
    """The shard order of an epoch and how many samples of that stream it uses."""
    order = list(range(len(counts)))
    if shuffle:
        random.Random(seed * 100_003 + epoch).shuffle(order)
    total = sum(counts)
    used = total // global_batch * global_batch if drop_last else total
    return order, used


def pieces(counts: list[int], order: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """(shard, skip, take) covering samples [start, stop) of the concatenated stream."""
    out, pos = [], 0
    for s in order:
        lo, hi = max(start, pos), min(stop, pos + counts[s])
        if lo < hi:
            out.append((s, lo - pos, hi - lo))
        pos += counts[s]
        if pos >= stop:
            break
    return out


class ShardStream(torch.utils.data.IterableDataset):
    """One rank's (uint8 image, label) samples of one epoch, split across DataLoader workers.

    With train=True (set_epoch before each epoch): the epoch's used samples, this rank's
    contiguous 1/world of them, each worker a contiguous run of whole local batches,
    shuffled through a buffer. With train=False: every sample once, in order, split by
    worker (evaluation).
    """

    def __init__(self, shards: ShardSet, channels: int, size: tuple[int, int] | None = None,
                 transform=None, train: bool = True, batch_size: int = 1, seed: int = 0,
                 rank: int = 0, world: int = 1, shuffle_buffer: int = 1000):
        self.shards, self.channels, self.transform = shards, channels, transform
        self.size = size if size is None or isinstance(size, Fit) else (int(size[0]), int(size[1]))
        self.train, self.batch_size, self.seed = train, batch_size, seed  # batch_size: global
        self.rank, self.world, self.shuffle_buffer = rank, world, shuffle_buffer
        self.epoch = 0
        self.classes = shards.classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """How many samples the whole set holds (every rank's and the unused tail)."""
        return self.shards.total

    def part(self, worker: int, workers: int) -> tuple[list[int], int, int]:
        """The shard order and the sample range [start, stop) one worker reads this epoch."""
        if not self.train:
            order = list(range(len(self.shards.counts)))
            n = self.shards.total
            return order, n * worker // workers, n * (worker + 1) // workers
        order, used = epoch_plan(self.shards.counts, self.epoch, self.seed, self.batch_size)
        per_rank = used // self.world
        local = self.batch_size // self.world
        batches = per_rank // local
        lo_b, hi_b = batches * worker // workers, batches * (worker + 1) // workers
        base = self.rank * per_rank
        return order, base + lo_b * local, base + hi_b * local

    def samples(self, worker: int = 0, workers: int = 1) -> Iterator[tuple[str, bytes, int]]:
        order, start, stop = self.part(worker, workers)
        for s, skip, take in pieces(self.shards.counts, order, start, stop):
            yield from read_shard(self.shards.location(s), skip, take, self.shards.classes)

    def _shuffled(self, it, rng: random.Random):
        buf = []
        for item in it:
            buf.append(item)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def _decode(self, key: str, data: bytes) -> torch.Tensor | None:
        try:
            with open_image(io.BytesIO(data)) as im:
                return image_to_uint8(im, self.channels, self.size)
        except _DECODE_ERRORS:
            warnings.warn(f"{one_line(key)}: unreadable image in a shard (corrupt or truncated), skipped",
                          VitkitWarning, stacklevel=2)
            return None

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        it = self.samples(worker, workers)
        if self.train:
            rng = random.Random(hash((self.seed, self.epoch, self.rank, worker)))
            it = self._shuffled(it, rng)
        last = None
        for key, data, label in it:
            img = self._decode(key, data)
            if img is None:  # keep the batch count: stand the previous good image in
                if last is None:
                    continue
                img = last
            last = img
            yield (self.transform(img) if self.transform is not None else img), label


def write_shards(index: FolderIndex, out: str | Path, shard_size: int = 1000, seed: int | None = 0) -> Path:
    """Write the images of a folder index as tar shards of shard_size samples plus index.json.

    The bytes of each file are stored unchanged (no re-encoding), under the key of its place in
    the index. Samples are spread over the shards in a random order (seeded; seed=None keeps the
    index's class-by-class order): training shuffles shards and then samples within a buffer,
    and with class-sorted shards a buffer would hold only a class or two, so batches would too.
    """
    from ..files import atomic_write, atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(index.paths)
    order = list(range(n))
    if seed is not None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    shards = []
    for first in range(0, n, shard_size):
        name = f"shard-{first // shard_size:06d}.tar"
        chunk = order[first:first + shard_size]

        def write(f, chunk=chunk):
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for i in chunk:
                    key = f"{i:09d}"
                    p = index.paths[i]
                    for suffix, data in ((p.suffix.lower().lstrip("."), p.read_bytes()),
                                         ("cls", str(index.labels[i]).encode())):
                        info = tarfile.TarInfo(f"{key}.{suffix}")
                        info.size = len(data)
                        info.mode = 0o644
                        tar.addfile(info, io.BytesIO(data))
        atomic_write(out / name, write)
        shards.append({"name": name, "count": len(chunk)})
    atomic_write_json(out / INDEX_NAME, {"format": "webdataset", "classes": index.classes, "shards": shards,
                                         "total": n})
    return out


def probe_shards(shards: ShardSet, n: int = 32) -> tuple[tuple[int, int], int]:
    """Most common (H, W) and channel count of the first n samples of the first shard."""
    from .folder import probe_images

    first = (io.BytesIO(data) for _, data, _ in read_shard(shards.location(0), 0, n, shards.classes))
    return probe_images(first, shards.location(0))


def shard_folder(src: str | Path, out: str | Path, shard_size: int = 1000, seed: int = 0) -> str:
    """Write the image folder `src` (root/<class>/<image>) as shards in `out`; returns the
    closing line of `vitkit shards`."""
    from .folder import scan_folder

    index = scan_folder(src)
    write_shards(index, out, shard_size, seed)
    n = -(-len(index.paths) // shard_size)
    return (f"wrote {len(index.paths)} images of {len(index.classes)} classes as {n} shards to {out}; "
            f"train with --data.dataset shards --data.path {out}")
