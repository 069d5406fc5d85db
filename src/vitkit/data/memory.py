"""Data already in memory as ImageArrays (built by a script or a notebook), wrapped as the Data
the trainer takes: ``vitkit.training.fit(cfg, data=in_memory(train, val))`` trains on them
without any file or DataConfig. The run records that its data came this way, since its stored
DataConfig cannot read them back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .arrays import ImageArrays
from .preprocess import InputSpec

if TYPE_CHECKING:
    from .pipeline import Data


def in_memory(train: ImageArrays, val: ImageArrays, mean: list[float] | None = None,
              std: list[float] | None = None) -> Data:
    """A Data (vitkit.data.pipeline) around images already in memory, for vitkit.training.fit(...,
    data=...): the input spec is the images' own size and channels, normalized by the training
    images' per-channel mean and std (as load_data measures them) unless given."""
    from .pipeline import Data

    if list(train.classes) != list(val.classes):
        raise ValueError("the training and validation images name different classes")
    if train.images.shape[1:] != val.images.shape[1:]:
        raise ValueError(f"training images are {tuple(train.images.shape[1:])}, validation images "
                         f"{tuple(val.images.shape[1:])}")
    channels, h, w = (int(v) for v in train.images.shape[1:])
    if mean is None:
        sample = train.images[:: max(1, len(train) // 5000)].float() / 255.0
        mean = [round(v, 4) for v in sample.mean(dim=(0, 2, 3)).tolist()]
        std = std or [round(v, 4) for v in sample.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()]
    spec = InputSpec((h, w), channels, list(mean), list(std or [1.0] * channels))
    kind = "tags" if train.multilabel else "classes"
    notes = [f"{len(train)} training and {len(val)} validation images given in memory, "
             f"{len(train.classes)} {kind}, {channels}x{h}x{w}"]
    return Data(train, val, list(train.classes), spec, notes)
