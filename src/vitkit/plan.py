"""The input plan: from what the data are (a Survey) and what the model is (given or default),
every decision about a run's input, made once before any image is decoded: the size images
are fed at, the patch and stem the model meets them with, the channels, how images of another
shape are resized, the normalization, the augmentation defaults and whether decoded images are
kept in memory. The data loader (vitkit.data.pipeline.load_data) follows the plan.

Small images (up to SMALL_SIDE px: digits, MNIST, CIFAR) train at their own size (moved to the
nearest size with a reasonable patch grid when a side is prime) on the small hybrid with its
conv stem at full resolution. Photos (natural images larger than that) train at PHOTO_SIZE
on the plain patch embedding (the default patch rule's 8x8 grid: patch 8), centre-cropped,
with random resized crops and flips: in the sweep of benchmarks/photos.py that trained best in
a fixed time on 2 CPU cores (a conv stem at 64 px costs more per step than it gives back).
Above SMALL_SIDE px a conv stem, when asked for, downsamples by PHOTO_STEM_STRIDE.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import replace
from typing import Any

from .config import ViTConfig, patch_problem
from .data.augment import AugmentConfig, default_pad
from .data.inputs import InputPlan, ModelGeometry, Survey, cache_bytes, should_cache
from .data.pipeline import Data, DataConfig, read_data, survey_data
from .sizes import hw

SMALL_SIDE = 64  # images up to this side train at their own size
PHOTO_SIZE = 64  # the side photos train at unless --data.image_size is given
PHOTO_STEM_STRIDE = 4  # the small model's conv stem stride above SMALL_SIDE px
CROP_MARGIN = 1.25  # random resized crops are cut from a cached copy this much larger
ARRAY_SETS = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist")  # read whole into memory


def plan_input(data: DataConfig, augment: AugmentConfig | None = None, model: Any = None,
               survey: Survey | None = None, from_scratch: bool = True) -> InputPlan:
    """The input plan for `data` (surveyed here unless `survey` is given).

    `model` is None (the default small model), the given fields of a ModelSpec or a
    ModelGeometry (training: the rest from the default rules), or a built model's ViTConfig
    (fine-tuning, probing: its size unless data.image_size is given, its channels unless
    data.channels is, its patch and stem). Given image size, channels and normalization
    always win. Without `augment` nothing is augmented (evaluation, probes). `from_scratch`
    False (fine-tuning): small images are not shifted by default (resolve_augment).
    """
    survey = survey or survey_data(data)
    photos = is_photo(survey.own, survey.natural)
    built = isinstance(model, ViTConfig)
    notes: list[str] = []
    if built:
        size = hw(data.image_size or model.image_size)
        problem = patch_problem(size, model.patch_size)
        if problem:
            raise ValueError(problem)
        channels = data.channels or model.num_channels
        geometry = ModelGeometry(model.patch_size, model.stem, model.stem_stride)
    else:
        size, note = data_size(survey.own, survey.natural, data.image_size)
        if note and not (survey.dataset in ARRAY_SETS and "taken from the data" in note):
            notes.append(note)
        channels = data.channels or survey.channels
        geometry = model_geometry(size, _given(model), photos)
    resize = resolve_resize(data.resize, photos)
    aug, reason = (resolve_augment(augment, photos, size, from_scratch and not built)
                   if augment is not None else (None, None))
    line = defaults_line(survey.own, size, photos, resize, None if built else geometry, reason)
    if line or (reason and not photos):  # photos: the defaults line; small images: the shifts alone
        notes.append(line or reason)
    train_size, cache = size, True
    if survey.dataset == "shards":
        cache = False
    elif survey.dataset not in ARRAY_SETS:
        train_size = cache_size(size, survey.own, aug.crop if aug and resize != "keep" else "none")
        nbytes = (cache_bytes(survey.train_count, channels, train_size)
                  + cache_bytes(survey.val_count, channels, size))
        cache = should_cache(data.cache, nbytes, data.cache_gb)
    if resize == "keep" and not cache:  # a streamed batch is stacked as it comes
        raise ValueError(f"--data.resize keep: the images of {data.path} would be streamed, and images of "
                         "sizes of their own are batched from memory; raise --data.cache_gb or set "
                         "--data.cache always")
    mean = list(data.mean) if data.mean is not None else None
    std = list(data.std or [1.0] * channels) if data.mean is not None else None
    return InputPlan(survey, size, channels, geometry, resize, mean, std, aug, cache, train_size, photos,
                     tuple(notes))


def for_source(data: DataConfig, config: ViTConfig, mean: list[float] | None, std: list[float] | None,
               image_size: int | tuple[int, int] | None = None) -> tuple[DataConfig, ModelGeometry]:
    """The data settings and model geometry of a run that starts from a built model (fine-tuning):
    the model's channels, size (unless `image_size` or data.image_size is given), patch and stem,
    and its normalization (unless data.mean is given). What the run stores, so that a resumed
    run plans the same input with plan_input(data, augment, geometry)."""
    size = hw(image_size or data.image_size or config.image_size)
    problem = patch_problem(size, config.patch_size)
    if problem:
        raise ValueError(problem)
    if data.mean is None:
        data = replace(data, mean=list(mean) if mean is not None else None,
                       std=list(std) if std is not None else None)
    data = replace(data, channels=data.channels or config.num_channels, image_size=size)
    return data, ModelGeometry(config.patch_size, config.stem, config.stem_stride)


def _given(model: Any) -> dict:
    """The fields set on a ModelSpec or ModelGeometry: what the geometry must respect."""
    if model is None:
        return {}
    return {k: v for k, v in dataclasses.asdict(model).items() if v is not None}


def is_photo(size: tuple[int, int], natural: bool = True) -> bool:
    """Natural images larger than SMALL_SIDE: trained at PHOTO_SIZE with photo augmentation."""
    return natural and max(size) > SMALL_SIDE


def model_geometry(image_size: int | tuple[int, int], given: dict | None = None,
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


def data_size(own: tuple[int, int], natural: bool = True, image_size: int | tuple[int, int] | None = None
              ) -> tuple[tuple[int, int], str | None]:
    """The size images are fed at when no model fixes it, and a note saying why."""
    h, w = own
    if image_size:
        return hw(image_size), None
    if is_photo((h, w), natural):
        return (PHOTO_SIZE, PHOTO_SIZE), None
    size = default_image_size((h, w))
    if size == (h, w):
        return size, f"image size {h}x{w} taken from the data"
    return size, (f"images are {h}x{w}: resized to {size[0]}x{size[1]}, which the default patch size "
                  f"divides (set --data.image_size to change)")


def resolve_resize(resize: str, photos: bool) -> str:
    """How images of another shape meet the input size: as given, or ("auto") centre-cropped
    for photos, which trained best of squash, crop and keep on real photos from scratch and no
    worse fine-tuned (benchmarks/hymenoptera_transfer.py), and squashed for small images (which
    are mostly square: for a square image squash and crop are the same)."""
    if resize != "auto":
        return resize
    return "crop" if photos else "squash"


def resolve_augment(augment: AugmentConfig, photos: bool, size: tuple[int, int] | None = None,
                    from_scratch: bool = True) -> tuple[AugmentConfig, str | None]:
    """The augmentation with its "auto" values settled: random resized crop and flip for photos;
    for small images trained from scratch a random pad-and-crop (a shift of up to default_pad
    px, which changes no digit's or object's class) and no flip (a mirrored digit is another
    sign): on CIFAR-10 it turned longer training from overfitting into a gain
    (benchmarks/README.md, "every default on CIFAR-10"); small images fine-tuning a given model
    keep none, as measured before. Also the reason, when a default was taken (`size`: the
    images', for the pad)."""
    crop_auto, flip_auto = augment.crop == "auto", augment.flip is None
    small = "pad" if from_scratch else "none"
    crop = ("resized" if photos else small) if crop_auto else augment.crop
    flip = photos if flip_auto else augment.flip
    resolved = replace(augment, crop=crop, flip=flip)
    if not photos:
        if not crop_auto or crop == "none":
            return resolved, None
        pad = augment.pad if augment.pad is not None else default_pad(size) if size else None
        by = f" by up to {pad} px" if pad is not None else ""
        return resolved, f"random shifts{by} (pad and crop; set --augment.crop none to turn off)"
    if not (crop_auto or flip_auto):
        return resolved, None
    chosen = [f"crop {crop}" if crop_auto else "", "flip" if flip_auto and flip else ""]
    off = "--augment.crop none" if crop_auto else "--augment.flip false"
    return resolved, " + ".join(c for c in chosen if c) + f" (natural images; set {off} to turn off)"


def cache_size(size: tuple[int, int], own: tuple[int, int], crop: str) -> tuple[int, int]:
    """The size training images are cached at: with random resized crops, CROP_MARGIN times the
    training size (never beyond the images' own), so that crops lose no resolution."""
    h, w = size
    if crop != "resized":
        return h, w
    oh, ow = own
    return max(h, min(math.ceil(h * CROP_MARGIN), oh)), max(w, min(math.ceil(w * CROP_MARGIN), ow))


def defaults_line(own: tuple[int, int], size: tuple[int, int], photos: bool, resize: str,
                  geometry: ModelGeometry | None, augment_reason: str | None) -> str | None:
    """One line on the defaults chosen for photos, or None for small images."""
    if not photos:
        return None
    h, w = own
    patch = f", patch {geometry.patch_size}, stem {geometry.stem}" if geometry else ""
    if geometry and geometry.stem == "conv":
        patch += f" stride {geometry.stem_stride}"
    return (f"photos {h}x{w} -> {size[0]}x{size[1]} ({resize}){patch}"
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


def load_data(data: DataConfig, augment: AugmentConfig | None = None, model: Any = None) -> Data:
    """Plan the input (plan_input) and read the data as planned (vitkit.data.pipeline.read_data):
    the one call a notebook needs."""
    return read_data(data, plan_input(data, augment, model))
