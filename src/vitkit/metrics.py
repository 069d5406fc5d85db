"""Multi-label metrics on (images, tags) arrays of scores and 0/1 targets.

Written out in NumPy rather than taken from scikit-learn so that training, `vitkit evaluate`
and the threshold search share one definition without importing scikit-learn on every epoch;
tests check each against scikit-learn's average_precision_score and f1_score.
"""

from __future__ import annotations

import numpy as np

# The thresholds a multi-label model's decision threshold is chosen from: 0.05, 0.10, ..., 0.95.
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one tag: the precision at each distinct score, weighted by the
    recall gained there (no interpolation; ties count as one threshold), as scikit-learn's
    average_precision_score. NaN when the tag has no positive image: there is nothing to recall."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).ravel() > 0.5
    positives = int(targets.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], targets[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_tag_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Average precision of every tag (column); NaN for a tag without positives."""
    return np.array([average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])


def mean_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP: the mean of the per-tag average precisions, over the tags that have positives."""
    ap = per_tag_ap(scores, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def _counts(pred: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = np.asarray(targets) > 0.5
    pred = np.asarray(pred, dtype=bool)
    return (pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)


def per_tag_f1(pred: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """F1 of every tag for 0/1 decisions; 0 for a tag neither predicted nor present
    (scikit-learn's zero_division default)."""
    tp, fp, fn = _counts(pred, targets)
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def micro_f1(pred: np.ndarray, targets: np.ndarray) -> float:
    """F1 over every (image, tag) decision pooled: frequent tags weigh more."""
    tp, fp, fn = (int(v.sum()) for v in _counts(pred, targets))
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def macro_f1(pred: np.ndarray, targets: np.ndarray) -> float:
    """The mean of the per-tag F1 scores: every tag weighs the same."""
    return float(per_tag_f1(pred, targets).mean())


def best_threshold(scores: np.ndarray, targets: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> float:
    """The one threshold on the probabilities, shared by every tag, that maximizes micro F1 on
    these images; among equal scores the one nearest 0.5. One global threshold rather than one
    per tag: a validation split holds few positives of a rare tag, and a per-tag search would
    fit their noise."""
    f1 = np.array([micro_f1(scores >= t, targets) for t in grid])
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])
