"""Input geometry, decided once: from what the data are and what the model is, the size images
are fed at, the patch and stem, the channels, the normalization, whether the images are
decoded once into memory, and the augmentation defaults.

Small images (up to SMALL_SIDE px: digits, MNIST, CIFAR) train at their own size (moved to the
nearest size with a reasonable patch grid when a side is prime) on the small hybrid with its
conv stem at full resolution. Photos (natural images larger than that) train at PHOTO_SIZE
on the plain patch embedding (the default patch rule's 8x8 grid: patch 8) with random resized
crops and flips by default: in the sweep of benchmarks/photos.py that trained best in a fixed
time on 2 CPU cores (a conv stem at 64 px costs more per step than it gives back). Above
SMALL_SIDE px a conv stem, when asked for, downsamples by PHOTO_STEM_STRIDE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .augment import AugmentConfig

SMALL_SIDE = 64  # images up to this side train at their own size
PHOTO_SIZE = 64  # the side photos train at unless --data.image_size is given
PHOTO_STEM_STRIDE = 4  # the small model's conv stem stride above SMALL_SIDE px
CROP_MARGIN = 1.25  # random resized crops are cut from a cached copy this much larger
CACHE_BUDGET_GB = 2.0  # decoded uint8 images up to this many GiB are kept in memory
RESIZE_MODES = ("squash", "crop", "keep")
MAX_ASPECT = 2.0  # keep: images longer than 2:1 are fed at 2:1 (bounds the batch canvas)


def hw(size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) of a size given as one side or as a pair."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def keep_size(own: Sequence[int], size: int | Sequence[int], patch: int) -> tuple[int, int]:
    """The size an image of `own` (h, w) is fed at when its aspect ratio is kept (resize "keep",
    as NaFlex does): a grid of patch x patch patches with no more patches than `size` holds,
    whose aspect ratio is nearest the image's (clamped to MAX_ASPECT), the most patches among
    equals. A square image gets `size` itself when that is square."""
    oh, ow = hw(own)
    h, w = hw(size)
    budget = max(1, (h // patch) * (w // patch))
    aspect = math.log(min(max(oh / max(ow, 1), 1 / MAX_ASPECT), MAX_ASPECT))
    gh, gw = min(((g, budget // g) for g in range(1, budget + 1)),
                 key=lambda c: (abs(math.log(c[0] / c[1]) - aspect), -c[0] * c[1]))
    return gh * patch, gw * patch


def patch_problem(size: int | Sequence[int], patch: int) -> str | None:
    """Why images of this size cannot be cut into patch x patch patches, or None when they can."""
    h, w = hw(size)
    if patch < 1 or h % patch or w % patch:
        return f"image size {h}x{w} is not a multiple of patch size {patch}"
    return None


def check_patch(size: int | Sequence[int], patch: int) -> None:
    """Raise ValueError unless the patch size divides the image size."""
    problem = patch_problem(size, patch)
    if problem:
        raise ValueError(problem)


def is_photo(size: int | Sequence[int], natural: bool = True) -> bool:
    """Natural images larger than SMALL_SIDE: trained at PHOTO_SIZE with photo augmentation."""
    return natural and max(hw(size)) > SMALL_SIDE


@dataclass(frozen=True)
class ModelGeometry:
    """How the model meets the image: pixels per patch side, stem kind and stride."""

    patch_size: int
    stem: str
    stem_stride: int


def model_geometry(image_size: int | Sequence[int], given: dict | None = None,
                   photos: bool = False) -> ModelGeometry:
    """Patch and stem for a model built for image_size: the given fields (a ModelSpec's, or a
    variant's) where set; else, for photos, the plain patch embedding, and for small images the
    small model's conv stem at full resolution; a conv stem above SMALL_SIDE px downsamples by
    PHOTO_STEM_STRIDE; the patch from the default patch rule (default_patch_size)."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    size = hw(image_size)
    named = given.get("variant")  # "Ti/16": a plain ViT whose name gives the patch
    stem = given.get("stem", "patch" if named or photos else "conv")
    large = max(size) > SMALL_SIDE
    stride = given.get("stem_stride", PHOTO_STEM_STRIDE if large and stem == "conv" else 1)
    patch = given.get("patch_size", int(named.split("/")[1]) if named else None)
    if patch is None:
        patch = default_patch_size(size, stride if stem == "conv" else 1)
    return ModelGeometry(int(patch), stem, int(stride))


@dataclass
class Geometry:
    """Everything about a model's input that the data and the model decide together."""

    image_size: tuple[int, int]
    channels: int
    model: ModelGeometry | None  # None when a given model decides (fine-tuning, evaluation)
    mean: list[float] | None  # None: measured on the training images (0.5 when streamed)
    std: list[float] | None
    photos: bool
    notes: list[str] = field(default_factory=list)
    patch: int = 1  # pixels per patch side of the model the images are for
    resize: str = "squash"  # how images of another shape meet image_size (resolve_resize)


def data_size(own: Sequence[int], natural: bool = True, image_size: int | Sequence[int] | None = None
              ) -> tuple[tuple[int, int], str | None]:
    """The size images are fed at when no model fixes it, and a note saying why."""
    h, w = hw(own)
    if image_size:
        return hw(image_size), None
    if is_photo((h, w), natural):
        return (PHOTO_SIZE, PHOTO_SIZE), None
    size = default_image_size((h, w))
    if size == (h, w):
        return size, f"image size {h}x{w} taken from the data"
    return size, (f"images are {h}x{w}: resized to {size[0]}x{size[1]}, which the default patch size "
                  f"divides (set --data.image_size to change)")


def decide(own: Sequence[int], channels: int, natural: bool = True, *,
           image_size: int | Sequence[int] | None = None, want_channels: int | None = None,
           model: Any = None, mean: list[float] | None = None,
           std: list[float] | None = None, model_mean: list[float] | None = None,
           model_std: list[float] | None = None, resize: str = "auto") -> Geometry:
    """The input geometry for data of `own` size and `channels` (natural images or not).

    `model` is a built model's ViTConfig (fine-tuning, evaluation: its channels, patch and,
    unless image_size is given, its size hold; its normalization `model_mean` / `model_std`
    unless mean / std are given) or the given fields of a ModelSpec (training: the rest is
    model_geometry's). Given image_size, channels and normalization always win.
    """
    photos = is_photo(own, natural)
    notes: list[str] = []
    if model is not None and not isinstance(model, dict):  # a built model's ViTConfig
        size = hw(image_size or model.image_hw)
        check_patch(size, model.patch_size)
        c = want_channels or model.num_channels
        if mean is None:
            mean, std = model_mean, model_std
        return Geometry(size, c, None, mean, std, photos, notes, model.patch_size,
                        resolve_resize(resize, photos))
    size, note = data_size(own, natural, image_size)
    notes += [note] if note else []
    geo = model_geometry(size, model, photos)
    return Geometry(size, want_channels or channels, geo, mean, std if mean is not None else None, photos,
                    notes, geo.patch_size, resolve_resize(resize, photos))


def cache_size(size: Sequence[int], own: Sequence[int], crop: str) -> tuple[int, int]:
    """The size training images are cached at: with random resized crops, CROP_MARGIN times the
    training size (never beyond the images' own), so that crops lose no resolution."""
    h, w = hw(size)
    if crop != "resized":
        return h, w
    oh, ow = hw(own)
    return max(h, min(math.ceil(h * CROP_MARGIN), oh)), max(w, min(math.ceil(w * CROP_MARGIN), ow))


def cache_bytes(count: int, channels: int, size: Sequence[int]) -> int:
    """Bytes that `count` decoded uint8 images of this size take."""
    h, w = hw(size)
    return count * channels * h * w


def should_cache(mode: str, nbytes: int, budget_gb: float = CACHE_BUDGET_GB) -> bool:
    """Decode once and keep in memory: always, never, or ("auto") when the decoded uint8 images
    (cache_bytes) fit in the budget, whatever their side."""
    if mode in ("always", "never"):
        return mode == "always"
    return nbytes <= budget_gb * 2**30


def resolve_resize(resize: str, photos: bool) -> str:
    """How images of another shape meet the input size: as given, or ("auto") centre-cropped
    for photos, which trained best of squash, crop and keep on real photos from scratch and no
    worse fine-tuned (benchmarks/hymenoptera_transfer.py), and squashed for small images (which
    are mostly square: for a square image squash and crop are the same)."""
    if resize != "auto":
        return resize
    return "crop" if photos else "squash"


def resolve_augment(augment: AugmentConfig, photos: bool) -> tuple[AugmentConfig, str | None]:
    """The augmentation with its "auto" values settled: random resized crop and flip for photos,
    none for digits and other small images; and the reason, when a default was taken."""
    crop_auto, flip_auto = augment.crop == "auto", augment.flip is None
    crop = ("resized" if photos else "none") if crop_auto else augment.crop
    flip = photos if flip_auto else augment.flip
    resolved = replace(augment, crop=crop, flip=flip)
    if not photos or not (crop_auto or flip_auto):
        return resolved, None
    chosen = [f"crop {crop}" if crop_auto else "", "flip" if flip_auto and flip else ""]
    off = "--augment.crop none" if crop_auto else "--augment.flip false"
    return resolved, " + ".join(c for c in chosen if c) + f" (natural images; set {off} to turn off)"


def defaults_line(own: Sequence[int], geo: Geometry, augment_reason: str | None) -> str | None:
    """One line on the defaults chosen for photos, or None for small images."""
    if not geo.photos:
        return None
    h, w = hw(own)
    s = geo.image_size
    patch = f", patch {geo.model.patch_size}, stem {geo.model.stem}" if geo.model else ""
    if geo.model and geo.model.stem == "conv":
        patch += f" stride {geo.model.stem_stride}"
    return (f"photos {h}x{w} -> {s[0]}x{s[1]} ({geo.resize}){patch}"
            + (f", {augment_reason}" if augment_reason else ""))


# ---- default patch size for data of any size ------------------------------------------------
def _target_patch(h: int, w: int) -> float:
    """The patch side of the default grid: about 4x4 up to 16 px, 8x8 up to 64 px, else 16 px patches."""
    side = min(h, w)
    if side <= 16:
        return side / 4
    if max(h, w) <= 64:
        return side / 8
    return 16.0


def _reasonable(patch: int, target: float) -> bool:
    """Within a factor 2 of the target patch side (a factor 4 in tokens)."""
    return 0.5 <= patch / max(target, 1.0) <= 2.0


def default_patch_size(image_size: int | tuple[int, int], stem_stride: int = 1) -> int:
    """The patch side used when none is given: one that divides both height and width (and is
    a multiple of stem_stride), with the grid closest to about 4x4 for images up to 16 px,
    8x8 up to 64 px, and 16 px patches beyond.

    Where it divides the image, the side rounded down from that target is kept (8x8 -> 2,
    32x32 -> 4, 224x224 -> 16); otherwise the nearest divisor in ratio wins (28x28 -> 4,
    30x20 -> 2). A prime side leaves only patch 1 or the whole side: default_image_size
    gives the nearest size with a reasonable grid.
    """
    h, w = hw(image_size)
    if h < 1 or w < 1 or stem_stride < 1:
        raise ValueError(f"image size {h}x{w} and stem stride {stem_stride} must be positive")
    target = _target_patch(h, w)
    g = math.gcd(h, w)
    candidates = [p for p in range(stem_stride, g + 1, stem_stride) if g % p == 0]
    if not candidates:
        raise ValueError(f"image size {h}x{w}: no patch size divides it that is a multiple of stem stride "
                         f"{stem_stride}; set --model.patch_size or --data.image_size")
    rounded = max(1, int(target))
    if rounded in candidates:
        return rounded
    return min(candidates, key=lambda p: (abs(math.log(p / target)), p))


def default_image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """The image size itself when default_patch_size finds a reasonable grid for it, else the
    nearest size that the target patch side divides and that gets a reasonable grid
    (31x31 -> 30x30, patch 3; 17x17 -> 18x18, patch 2)."""
    h, w = hw(image_size)
    target = _target_patch(h, w)
    if _reasonable(default_patch_size((h, w)), target):
        return h, w
    q = max(1, int(target))

    def near(n: int) -> list[int]:  # multiples of q around n
        lo = max(q, n // q * q)
        return sorted({max(q, lo - q), lo, lo + q, lo + 2 * q})

    sizes = sorted(((a, b) for a in near(h) for b in near(w)),
                   key=lambda s: (abs(s[0] - h) + abs(s[1] - w), -s[0] - s[1]))
    for a, b in sizes:
        if _reasonable(default_patch_size((a, b)), _target_patch(a, b)):
            return a, b
    return sizes[0]
