"""Multi-label models: images that carry any number of tags, each tag a sigmoid probability.

A multi-label data set holds (N, K) multi-hot labels (vitkit.data.arrays.ImageArrays); a model
trained on it (vitkit.training.objectives.MultiLabel) stores its decision threshold in
config.json as ``"multilabel": {"threshold": t}`` beside "classes". Everything that reads a
model (predict, evaluate, serve, export, convert) asks this module whether it is multi-label
and what it answers: the sigmoid of each logit, and the tags at or over the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

KEY = "multilabel"  # config.json, ONNX metadata and the opened model's extra
DEFAULT_THRESHOLD = 0.5  # before any validation split chose one


def is_multilabel(data) -> bool:
    """Whether a Data (vitkit.data.pipeline), or one of its splits, holds multi-hot labels."""
    split = getattr(data, "train", data)
    flag = getattr(split, "multilabel", None)  # a split that says so itself (ImageArrays and kin)
    if isinstance(flag, bool):
        return flag
    labels = getattr(split, "labels", None)
    if labels is None:  # streamed: the index behind the dataset
        labels = getattr(getattr(split, "index", None), "labels", None)
    if labels is None or len(labels) == 0:
        return False
    if isinstance(labels, (torch.Tensor, np.ndarray)):
        return labels.ndim == 2
    return np.ndim(labels[0]) == 1


def threshold_of(extra: Mapping | None) -> float | None:
    """The stored decision threshold of a multi-label model (its config.json or export
    metadata beside the model config), or None for a single-label model."""
    entry = (extra or {}).get(KEY)
    if entry is None or entry is False:
        return None
    if entry is True:
        return DEFAULT_THRESHOLD
    t = entry.get("threshold", DEFAULT_THRESHOLD) if isinstance(entry, Mapping) else DEFAULT_THRESHOLD
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 < t < 1.0:
        raise ValueError(f"multilabel threshold {t!r}: must be a number between 0 and 1")
    return float(t)


def entry(threshold: float, chosen_by: str) -> dict:
    """What config.json and export metadata hold for a multi-label model."""
    return {"threshold": round(float(threshold), 4), "chosen_by": chosen_by}


def probabilities(model: torch.nn.Module, x: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Class probabilities of a normalized batch: a sigmoid per tag for a multi-label model
    (tags are independent), else the model's own softmax."""
    if multilabel:
        return model(x).float().sigmoid()
    return model.predict_proba(x)


def over_threshold(probs: torch.Tensor, classes: list[str], threshold: float) -> list[dict]:
    """The tags of one image at or over the threshold, most probable first."""
    idx = (probs >= threshold).nonzero().flatten()
    idx = idx[probs[idx].argsort(descending=True)]
    return [{"class": classes[i], "index": i, "probability": round(float(probs[i]), 6)} for i in idx.tolist()]
