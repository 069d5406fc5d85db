"""What the data are and how they are read, as records: a Survey of the data (read before
anything is decided), the InputPlan decided from it above the data layer (vitkit.plan), and
the memory rule for keeping decoded images. The loader follows the plan; it decides nothing
about size, patch, resize or augmentation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .augment import AugmentConfig

CACHE_BUDGET_GB = 2.0  # decoded uint8 images up to this many GiB are kept in memory


@dataclass(frozen=True)
class Survey:
    """What a data set is, read once before the plan: the images' most common size and
    channels, whether they are natural images, the classes and counts, and the opened source
    (arrays, folder or table indexes, shards) that the loader then reads from."""

    dataset: str
    own: tuple[int, int]  # the most common (h, w) of the training images
    channels: int  # 1 if every probed image is grayscale, else 3
    natural: bool  # photographs or CIFAR, as opposed to digits and other small drawings
    classes: list[str]
    train_count: int
    val_count: int  # 0 when the validation images are split off the training ones
    multilabel: bool
    source: Any = field(repr=False, compare=False)  # what the loader reads (see pipeline.survey)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelGeometry:
    """How the model meets the image: pixels per patch side, stem kind and stride."""

    patch_size: int
    stem: str
    stem_stride: int


@dataclass(frozen=True)
class InputPlan:
    """Everything about a run's input, decided once (vitkit.plan.plan_input): the size images are
    fed at and the model geometry they meet, how images of another shape are resized, the
    given normalization (else measured on the training images), the settled augmentation,
    whether the decoded images are kept in memory and at what size the training ones are."""

    survey: Survey
    image_size: tuple[int, int]
    channels: int
    model: ModelGeometry
    resize: str  # squash | crop | keep
    mean: list[float] | None  # None: measured on the training images (0.5 when streamed)
    std: list[float] | None
    augment: AugmentConfig | None  # "auto" settled; None: nothing is augmented (evaluation, probes)
    cache: bool  # decode once and keep in memory (else stream)
    train_size: tuple[int, int]  # training images are decoded at this size (larger for crops)
    photos: bool
    notes: tuple[str, ...] = ()

    @property
    def patch(self) -> int:
        return self.model.patch_size


def cache_bytes(count: int, channels: int, size: tuple[int, int]) -> int:
    """Bytes that `count` decoded uint8 images of this size take."""
    h, w = size
    return count * channels * h * w


def should_cache(mode: str, nbytes: int, budget_gb: float = CACHE_BUDGET_GB) -> bool:
    """Decode once and keep in memory: always, never, or ("auto") when the decoded uint8 images
    (cache_bytes) fit in the budget, whatever their side."""
    if mode in ("always", "never"):
        return mode == "always"
    return nbytes <= budget_gb * 2**30
