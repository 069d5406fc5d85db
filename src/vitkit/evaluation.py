"""Accuracy of a model on a data set: top-1, top-5, per-class accuracy, confusion matrix; for a
multi-label model (vitkit.multilabel), mAP, micro and macro F1 and per-tag average precision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.arrays import ImageArrays, iterate_eval
from .data.preprocess import InputSpec, normalize
from .inference import Runner, as_runner, prepare


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    confusion: np.ndarray  # (true class, predicted class) counts
    classes: list[str]

    @property
    def per_class(self) -> dict[str, float]:
        totals = self.confusion.sum(1)
        return {c: float(self.confusion[i, i] / totals[i]) if totals[i] else float("nan")
                for i, c in enumerate(self.classes)}

    @property
    def count(self) -> int:
        return int(self.confusion.sum())


@dataclass
class MultiLabelResult:
    """A multi-label model on a data set: every sigmoid probability with its 0/1 target, and the
    threshold the F1 scores are taken at. mAP needs no threshold; F1 does."""

    loss: float  # binary cross-entropy per (image, tag)
    scores: np.ndarray  # (images, tags) sigmoid probabilities
    targets: np.ndarray  # (images, tags) 0/1
    classes: list[str]
    threshold: float
    multilabel = True
    top5 = None

    @property
    def count(self) -> int:
        return len(self.scores)

    @property
    def per_tag_ap(self) -> dict[str, float | None]:
        """Average precision of each tag (None for a tag without a positive image here)."""
        from .metrics import per_tag_ap

        return {c: (float(v) if np.isfinite(v) else None)
                for c, v in zip(self.classes, per_tag_ap(self.scores, self.targets), strict=True)}

    @property
    def map(self) -> float:
        """mAP: the mean of the per-tag average precisions, over tags with a positive image."""
        from .metrics import mean_ap

        return mean_ap(self.scores, self.targets)

    @property
    def top1(self) -> float:
        """mAP, in the place a training run reads its validation metric from (its val_acc)."""
        return self.map

    def at(self, threshold: float | None = None) -> np.ndarray:
        return self.scores >= (self.threshold if threshold is None else threshold)

    @property
    def micro_f1(self) -> float:
        from .metrics import micro_f1

        return micro_f1(self.at(), self.targets)

    @property
    def macro_f1(self) -> float:
        from .metrics import macro_f1

        return macro_f1(self.at(), self.targets)

    @property
    def per_tag_f1(self) -> dict[str, float]:
        from .metrics import per_tag_f1

        return {c: float(v) for c, v in zip(self.classes, per_tag_f1(self.at(), self.targets), strict=True)}

    def summary(self) -> dict:
        """What eval.json holds for a multi-label model."""
        return {"images": self.count, "multilabel": True, "mAP": self.map, "micro_f1": self.micro_f1,
                "macro_f1": self.macro_f1, "threshold": self.threshold, "loss": self.loss,
                "per_tag_ap": self.per_tag_ap, "per_tag_f1": self.per_tag_f1}


@torch.no_grad()
def evaluate_model(model: torch.nn.Module | Runner, data, spec: InputSpec, classes: list[str],
                   batch_size: int = 500, device: torch.device | str = "cpu",
                   precision: str = "fp32", workers: int = 0) -> EvalResult:
    """Evaluate a Runner (vitkit.inference.prepare), or a module in eval mode at `precision`;
    images are normalized with the model's InputSpec."""
    runner = as_runner(model, device, precision)
    device = runner.device
    k = len(classes)
    confusion = torch.zeros(k, k, dtype=torch.long)
    loss_sum, top5_hits = 0.0, 0
    for x, y in iterate_eval(data, batch_size, workers):
        x = normalize(x.to(device, non_blocking=True), spec)
        y = y.to(device)
        logits = runner(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.argmax(1)
        confusion += torch.bincount((y * k + pred).cpu(), minlength=k * k).view(k, k)
        topk = logits.topk(min(5, k), dim=1).indices
        top5_hits += (topk == y[:, None]).any(1).sum().item()
    n = int(confusion.sum())
    if n == 0:
        raise ValueError("no images to evaluate")
    conf = confusion.numpy()
    return EvalResult(loss_sum / n, float(np.trace(conf) / n), top5_hits / n, conf, list(classes))


@torch.no_grad()
def evaluate_multilabel(model: torch.nn.Module | Runner, data, spec: InputSpec, classes: list[str],
                        batch_size: int = 500, device: torch.device | str = "cpu", precision: str = "fp32",
                        workers: int = 0, threshold: float = 0.5) -> MultiLabelResult:
    """Sigmoid probabilities of every image against its multi-hot labels (a Runner, or a module
    in eval mode at `precision`)."""
    runner = as_runner(model, device, precision)
    device = runner.device
    scores, targets = [], []
    loss_sum = 0.0
    for x, y in iterate_eval(data, batch_size, workers):
        x = normalize(x.to(device, non_blocking=True), spec)
        logits = runner(x).float()
        y = y.to(device).float()
        if y.ndim != 2 or y.shape[1] != logits.shape[1]:
            raise ValueError(f"multi-label evaluation needs (N, {logits.shape[1]}) multi-hot labels, "
                             f"got {tuple(y.shape)}")
        loss_sum += F.binary_cross_entropy_with_logits(logits, y, reduction="sum").item()
        scores.append(logits.sigmoid().cpu())
        targets.append(y.cpu().to(torch.uint8))
    if not scores:
        raise ValueError("no images to evaluate")
    s, t = torch.cat(scores).numpy(), torch.cat(targets).numpy()
    return MultiLabelResult(loss_sum / s.size, s, t, list(classes), threshold)


def write_confusion(result: EvalResult, csv_path, png_path) -> None:
    """The confusion matrix as CSV (rows: true class) and as a labelled PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_write_bytes

    lines = ["true\\predicted," + ",".join(result.classes)]
    for i, c in enumerate(result.classes):
        lines.append(c + "," + ",".join(str(int(v)) for v in result.confusion[i]))
    atomic_write_bytes(csv_path, ("\n".join(lines) + "\n").encode())
    k = len(result.classes)
    size = min(4 + 0.35 * k, 20)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    norm = result.confusion / np.maximum(result.confusion.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), result.classes, rotation=90 if k > 10 else 45,
                  ha="right" if k <= 10 else "center")
    ax.set_yticks(range(k), result.classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (top-1 {result.top1:.2%}, {result.count} images)")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if result.confusion[i, j]:
                    ax.text(j, i, int(result.confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


@dataclass
class Evaluated:
    """What evaluate_path did: the result, on which images, in which precision, and where
    confusion.png, confusion.csv and eval.json were written (a multi-label model: eval.json alone)."""

    result: EvalResult | MultiLabelResult
    where: str
    precision: str
    out_dir: Path
    summary: dict  # what eval.json holds

    def to_json(self) -> dict:
        """What `vitkit evaluate --json true` prints: eval.json's summary, the precision, the data
        and where the files went."""
        return {**self.summary, "precision": self.precision, "data": self.where, "out": str(self.out_dir)}


def evaluation_images(opened, data=None, workers: int | None = None) -> tuple[object, int, str]:
    """(images, count, description) to evaluate an opened model on: all of `data` (a DataConfig),
    or else the validation split its training run used, re-made from its stored config; `data`
    may also be ImageArrays already prepared to the model's input size and channels."""
    from .data.pipeline import DataConfig, load_eval_data
    from .plan import load_data

    if isinstance(data, ImageArrays):
        return data, len(data), f"{len(data)} images given in memory"
    if data is not None:
        data.validate()
        ev = load_eval_data(data, opened.spec, opened.classes)
        return ev.images, ev.count, ev.description
    train = opened.extra.get("train")
    if opened.extra.get("data_source") == "in memory":
        raise ValueError(f"{opened.source}: trained on images given in memory, which its stored data "
                         "config cannot read back; pass the data to evaluate on")
    if not train:
        raise ValueError(f"{opened.source}: no stored training data; pass --data.dataset / --data.path")
    stored = DataConfig(**{**train["data"], "per_class": None})
    d = load_data(stored)  # the run's own validation split, as during training
    if d.classes != opened.classes:
        raise ValueError(f"the model's classes {opened.classes[:10]} differ from the data's {d.classes[:10]}")
    return d.val, len(d.val), f"the validation split of {stored.path or stored.dataset}"


def evaluate_path(weights: str | Path, data=None, out: str | Path | None = None, batch_size: int = 500,
                  precision: str = "auto", options=None, log=print, engine: str = "auto",
                  flip: bool = False) -> Evaluated:
    """Evaluate `weights` (anything vitkit.open_model opens) on `data` (a DataConfig or ImageArrays;
    default: the run's validation split) and write confusion.png, confusion.csv and eval.json to
    `out` (default: the run directory when weights is one, else the current directory). A
    multi-label model gets mAP, micro and macro F1 at its stored threshold and per-tag AP in
    eval.json instead (there is no confusion matrix of tag sets). flip: each image is answered
    with the mean logits of it and its mirror image (vitkit.inference.Runner.flip)."""
    import json

    from .files import atomic_write_json
    from .loading import open_model
    from .multilabel import threshold_of

    if batch_size < 1:
        raise ValueError(f"--batch_size {batch_size}: must be 1 or more")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out}: is a file; name a folder for confusion.png, confusion.csv and "
                         "eval.json")
    opened = open_model(weights, options)
    images, count, where = evaluation_images(opened, data)
    if log:
        log(f"evaluating on {count} images: {where}")
    runner = prepare(opened.model, opened.device, precision, engine, images=count * (1 + flip),
                     any_size=opened.spec.any_size, flip=flip)
    precision = runner.precision
    workers = getattr(data, "workers", 0 if isinstance(data, ImageArrays) else 2)
    out_dir = Path(out) if out else (Path(weights) if Path(weights).is_dir() else Path("."))
    threshold = threshold_of(opened.extra)
    if threshold is not None:
        ml = evaluate_multilabel(runner, images, opened.spec, opened.classes, batch_size, workers=workers,
                                 threshold=threshold)
        summary = ml.summary() | {"flip": flip}
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "eval.json", json.loads(json.dumps(summary)))
        return Evaluated(ml, where, precision, out_dir, summary)
    res = evaluate_model(runner, images, opened.spec, opened.classes, batch_size, workers=workers)
    write_confusion(res, out_dir / "confusion.csv", out_dir / "confusion.png")
    summary = {"images": res.count, "top1": res.top1, "top5": res.top5, "loss": res.loss, "flip": flip,
               "per_class": res.per_class}
    atomic_write_json(out_dir / "eval.json", json.loads(json.dumps(summary)))
    return Evaluated(res, where, precision, out_dir, summary)


def summary_lines(done: Evaluated) -> list[str]:
    """What `vitkit evaluate` prints: the accuracies and each class's, and the files written."""
    res = done.result
    if getattr(res, "multilabel", False):
        return multilabel_lines(done)
    tta = ", each with its mirror image" if done.summary.get("flip") else ""
    lines = [f"{res.count} images ({done.precision}{tta}): top-1 {res.top1:.2%}  top-5 {res.top5:.2%}  "
             f"loss {res.loss:.4f}"]
    width = max(len(c) for c in res.classes)
    lines += [f"  {c:<{width}}  {acc:.2%}" for c, acc in res.per_class.items()]
    return [*lines, f"wrote {done.out_dir}/confusion.png, confusion.csv, eval.json"]


def multilabel_lines(done: Evaluated) -> list[str]:
    """What `vitkit evaluate` prints for a multi-label model: the summary, then each tag's AP and F1."""
    res = done.result
    lines = [f"{res.count} images ({done.precision}): mAP {res.map:.2%}  micro F1 {res.micro_f1:.2%}  "
             f"macro F1 {res.macro_f1:.2%} (threshold {res.threshold:g})  loss {res.loss:.4f}"]
    width = max(len(c) for c in res.classes)
    f1 = res.per_tag_f1
    for c, ap in res.per_tag_ap.items():
        shown = "no positive image" if ap is None else f"{ap:.2%}"
        lines.append(f"  {c:<{width}}  AP {shown}  F1 {f1[c]:.2%}")
    lines.append(f"wrote {done.out_dir}/eval.json")
    return lines
