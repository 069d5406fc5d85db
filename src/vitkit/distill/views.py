"""The teacher's lessons, computed once: K augmented views of every training image, each with
the teacher's logits for that very view.

Teacher and student see the same view: it is augmented (crop, flip, RandAugment, erasing,
MixUp / CutMix) at the teacher's resolution, the teacher's logits are taken, and the student
gets the same view resized to its own resolution. Fixing K views is what lets the teacher's
outputs be cached: a fresh random view per epoch would need a teacher forward per step (on a
CPU the teacher's forward costs about as much as the student's whole training step). The
views are held in memory at the student's resolution (float16 pixels); `views_bytes` says
beforehand how much that is. They are also kept in the cache folder (distill/KEY.safetensors,
keyed by the teacher's weights, the images, the augmentation, the sizes, the seed and the
views), so a resumed run, or a second student taught by the same teacher, reads them back.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..cache import default_cache_dir, model_fingerprint
from ..data.arrays import ImageArrays, iterate_eval
from ..data.augment import AugmentConfig, BatchAugment
from ..features import data_fingerprint
from ..files import atomic_write_bytes
from ..notices import VitkitWarning, one_line


@dataclass
class TaughtViews(ImageArrays):
    """Training samples for the trainer's in-memory path: images (N, C, H, W) float16 pixels
    (0-255, normalized by the trainer as uint8 images are) and label rows (N, 2K): the target
    probabilities, then the teacher's logits."""

    def __post_init__(self) -> None:
        k = len(self.classes)
        if self.images.ndim != 4 or self.labels.shape != (len(self.images), 2 * k):
            raise ValueError(f"views {tuple(self.images.shape)} with labels {tuple(self.labels.shape)}: "
                             f"expected (N, C, H, W) and (N, {2 * k})")

    @property
    def multilabel(self) -> bool:
        return False


def views_bytes(images: int, views: int, channels: int, size: tuple[int, int], classes: int) -> int:
    return images * views * (channels * size[0] * size[1] * 2 + 2 * classes * 4)


@torch.no_grad()
def teach(teacher, train, augment: AugmentConfig, views: int, classes: list[str], class_map: list[int],
          mean: list[float], std: list[float], teacher_size: tuple[int, int], student_size: tuple[int, int],
          batch_size: int, device: torch.device, seed: int, workers: int = 0, log=print) -> TaughtViews:
    """`views` passes over `train` (uint8 images): view 0 as evaluation prepares images, the others
    augmented by `augment`; each batch's teacher logits (columns reordered by class_map to the
    data's classes) beside the view at the student's size. The randomness of view v comes from
    seed and v alone, so the same call gives the same views (a resumed run recomputes them)."""
    k = len(classes)
    plain = BatchAugment(AugmentConfig(crop="none", flip=False), k, mean, std, size=teacher_size)
    augmented = BatchAugment(augment, k, mean, std, size=teacher_size)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    index = torch.tensor(class_map, device=device)
    images, labels, seen, t0 = [], [], 0, time.perf_counter()
    for v in range(views):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed * 1_000_003 + v)
            for x, y in iterate_eval(train, batch_size, workers):
                x, y = (plain if v == 0 else augmented)(x.to(device), y.to(device))
                logits = teacher(x).float()[:, index]  # a vitkit.inference Runner: its own precision
                if tuple(x.shape[-2:]) != tuple(student_size):
                    x = F.interpolate(x, size=student_size, mode="bilinear", antialias=True,
                                      align_corners=False)
                images.append(((x * s + m) * 255).clamp(0, 255).half().cpu())
                target = F.one_hot(y, k).float() if y.ndim == 1 else y.float()
                labels.append(torch.cat([target, logits], 1).cpu())
                seen += len(x)
        log(f"teacher: view {v + 1}/{views}, {seen:,} images, {seen / (time.perf_counter() - t0):.0f} img/s")
    return TaughtViews(torch.cat(images), torch.cat(labels), list(classes))


VERSION = "views1"  # changes whenever what a view holds changes


def views_key(teacher, spec, train, class_map: list[int], augment: AugmentConfig, views: int,
              teacher_size: tuple[int, int], student_size: tuple[int, int], precision: str,
              seed: int) -> str | None:
    """What the views are computed from, as one digest; None when the teacher is not a vitkit
    ViT (an ONNX session's weights are not read) or the images have no stable identity: the
    views are then computed every time."""
    data = data_fingerprint(train) if teacher is not None else None
    if data is None:
        return None
    weights = model_fingerprint(teacher, spec.to_dict())
    parts = [VERSION, weights, data, class_map, asdict(augment), views, list(teacher_size),
             list(student_size), precision, seed]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def views_path(cache_dir: str | Path | None, key: str) -> Path:
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / "distill" / f"{key}.safetensors"


def read_views(path: Path, classes: list[str]) -> TaughtViews | None:
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        t = load_file(str(path))
        return TaughtViews(t["images"], t["labels"], list(classes))
    except Exception:  # a damaged cache file is recomputed, never trusted
        warnings.warn(f"{one_line(path)}: unreadable views cache, ignored and rebuilt", VitkitWarning,
                      stacklevel=3)
        return None


def write_views(path: Path, views: TaughtViews) -> None:
    from safetensors.torch import save

    try:
        tensors = {"images": views.images.contiguous(), "labels": views.labels.contiguous()}
        atomic_write_bytes(path, save(tensors))
    except OSError as e:  # a read-only cache folder costs a recomputation, nothing else
        warnings.warn(f"{one_line(path)}: cannot write the views cache ({e.strerror})", VitkitWarning,
                      stacklevel=3)
