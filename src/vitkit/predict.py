"""Class probabilities for image files, prepared exactly as the model's training data was."""

from __future__ import annotations

from pathlib import Path

import torch

from .data.folder import _DECODE_ERRORS, list_images
from .data.preprocess import open_image, prepare_image
from .inference import by_size, prepare
from .loading import OpenedModel
from .multilabel import over_threshold, probabilities, threshold_of


@torch.no_grad()
def predict_files(opened: OpenedModel, files: list[Path], topk: int = 5, batch_size: int = 64,
                  precision: str = "auto", compile: bool | str = "auto", engine: str = "auto",
                  flip: bool = False) -> list[dict]:
    """Top-k classes with probabilities for each file; unreadable files get an "error" entry.

    A multi-label model (vitkit.multilabel) answers sigmoid probabilities: "labels" holds every
    tag at or over its stored threshold (most probable first), "top" the k most probable tags as
    for any model, and "threshold" the threshold used.

    The model runs through vitkit.inference.prepare: precision "auto" is bf16 where the
    hardware has native bf16 (norms and softmax stay in fp32), else fp32; `compile` is
    vitkit.compile's choice and `engine` vitkit.export.route's; flip: each image answered with
    the mean logits of it and its mirror image (Runner.flip).
    """
    runner = prepare(opened.model, opened.device, precision, engine, images=len(files) * (1 + flip),
                     compile=compile, any_size=opened.spec.any_size, flip=flip)
    topk = min(topk, len(opened.classes))
    threshold = threshold_of(opened.extra)
    results: list[dict] = []
    batch, names = [], []

    def flush():
        if not batch:
            return
        probs = torch.stack(by_size(lambda idx: list(probabilities(
            runner, torch.stack([batch[i] for i in idx]), threshold is not None).float()), batch))
        p, idx = probs.topk(topk, dim=1)
        for name, row, pi, ii in zip(names, probs.cpu(), p.tolist(), idx.tolist(), strict=True):
            entry = {"file": str(name)}
            if threshold is not None:
                entry.update(labels=over_threshold(row, opened.classes, threshold), threshold=threshold)
            entry["top"] = [{"class": opened.classes[i], "index": i, "probability": round(q, 6)}
                            for q, i in zip(pi, ii, strict=True)]
            results.append(entry)
        batch.clear()
        names.clear()

    for f in files:
        try:
            with open_image(f) as im:
                batch.append(prepare_image(im, opened.spec))
                names.append(f)
        except _DECODE_ERRORS as e:
            flush()
            results.append({"file": str(f), "error": f"cannot read image: {e}"})
            continue
        if len(batch) == batch_size:
            flush()
    flush()
    return results


def predict_paths(weights: str | Path, inputs: list[str | Path], topk: int = 5, precision: str = "auto",
                  options=None, engine: str = "auto", flip: bool = False) -> list[dict]:
    """Open `weights` (anything vitkit.open_model opens) and predict for image files and folders
    of images; files that cannot be read get an "error" entry instead of "top"."""
    from .loading import open_model

    if topk < 1:
        raise ValueError(f"--topk {topk}: must be 1 or more")
    return predict_files(open_model(weights, options), list_images(inputs), topk, precision=precision,
                         engine=engine, flip=flip)


def result_lines(results: list[dict]) -> list[str]:
    """What `vitkit predict` prints: a line per image with its top classes (a multi-label model:
    every tag over its threshold); files that could not be read are left to the warnings."""
    lines = []
    for r in results:
        if "error" in r:
            continue
        if "labels" in r:
            tags = "  ".join(f"{t['class']} {t['probability']:.1%}" for t in r["labels"])
            lines.append(f"{r['file']}: {tags or 'no tag over ' + format(r['threshold'], 'g')}")
        else:
            tops = "  ".join(f"{t['class']} {t['probability']:.1%}" for t in r["top"])
            lines.append(f"{r['file']}: {tops}")
    return lines


def report_unreadable(results: list[dict], warn) -> None:
    """warn(message) for every file that could not be read; ValueError when none could."""
    for r in results:
        if "error" in r:
            warn(f"{r['file']}: {r['error']}")
    if all("error" in r for r in results):
        raise ValueError(f"none of the {len(results)} input(s) could be read as an image")
