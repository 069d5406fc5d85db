"""What opening a model gives: the model with what is needed to feed it.

Its own module so that every way of opening a model (vitkit.loading for checkpoints,
vitkit.formats.exported for exported ONNX files) returns the same type without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .data.preprocess import InputSpec


@dataclass
class OpenedModel:
    """A model ready for use: eval mode, fp32, with what is needed to prepare its inputs."""

    model: torch.nn.Module
    classes: list[str]
    spec: InputSpec
    report: Any  # vitkit.formats.reader.LoadReport, or the ONNX reader's report
    source: str
    name: str
    extra: dict = field(default_factory=dict)  # the rest of a vitkit config.json ("train", ...)
    spec_source: str = ""  # where spec came from: "preset deit", "stored in config.json", a default

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
