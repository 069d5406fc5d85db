"""Images streamed from WebDataset-style tar shards, read with the standard library's tarfile.

A shard set is a directory (or a URL prefix) holding

- ``shard-000000.tar``, ``shard-000001.tar``, ...: each sample is ``<key>.<ext>`` (the image
  file's bytes, as they were) and ``<key>.cls`` (the class index as text), the layout the
  `webdataset` package reads;
- ``index.json``: the class names and each shard's name and sample count.

The counts are what makes the epochs exact: an epoch is a pure function of (seed, epoch):
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

import io
import json
import random
import subprocess
import tarfile
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..notices import VitkitWarning, one_line
from .folder import _DECODE_ERRORS, FolderIndex
from .preprocess import image_to_uint8, open_image

INDEX_NAME = "index.json"


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


def _read_text(location: str) -> str:
    if location.startswith(("http://", "https://")):
        with urllib.request.urlopen(location) as r:  # noqa: S310 (the user's own URL)
            return r.read().decode()
    return Path(location).read_text()


def open_shards(path: str) -> ShardSet:
    """The shard set at `path`: a directory or URL prefix holding index.json, or the index
    file itself."""
    index = path if path.endswith(".json") else f"{path.rstrip('/')}/{INDEX_NAME}"
    try:
        meta = json.loads(_read_text(index))
    except FileNotFoundError:
        raise FileNotFoundError(f"{index}: no shard index (write shards with `vitkit shards SRC OUT`)"
                                ) from None
    base = index.rsplit("/", 1)[0] if "/" in index else "."
    shards = meta["shards"]
    return ShardSet(base, [s["name"] for s in shards], [int(s["count"]) for s in shards],
                    list(meta["classes"]))


def _open_stream(location: str):
    """A readable binary stream of the tar file at location, and a function that closes it."""
    if location.startswith("pipe:"):
        p = subprocess.Popen(location[5:], shell=True, stdout=subprocess.PIPE)  # noqa: S602 (user's command)

        def close():
            p.stdout.close()
            p.wait()
        return p.stdout, close
    if location.startswith(("http://", "https://")):
        r = urllib.request.urlopen(location)  # noqa: S310
        return r, r.close
    f = open(location, "rb")  # noqa: SIM115
    return f, f.close


def read_shard(location: str, skip: int = 0, take: int | None = None) -> Iterator[tuple[str, bytes, int]]:
    """(key, image bytes, label) of samples skip .. skip + take - 1 of one shard, in order."""
    stream, close = _open_stream(location)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            key, image, label, has_image, has_label, n = None, None, None, False, False, 0
            for member in tar:
                k, _, ext = member.name.partition(".")
                ext = ext.lower()
                if not member.isfile() or (ext != "cls" and ext not in _EXTS):
                    continue
                if k != key:
                    key, image, label, has_image, has_label = k, None, None, False, False
                wanted = n >= skip  # skipped samples' bytes are never read
                if ext == "cls":
                    has_label = True
                    label = int(tar.extractfile(member).read().decode().strip()) if wanted else None
                else:
                    has_image = True
                    image = tar.extractfile(member).read() if wanted else None
                if has_image and has_label:
                    if wanted:
                        yield key, image, label
                    n, key = n + 1, None
                    if take is not None and n >= skip + take:
                        return
    finally:
        close()


_EXTS = {"jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm", "pbm"}


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
        self.size = None if size is None else (int(size[0]), int(size[1]))
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
            yield from read_shard(self.shards.location(s), skip, take)

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

    first = (io.BytesIO(data) for _, data, _ in read_shard(shards.location(0), 0, n))
    return probe_images(first, shards.location(0))
