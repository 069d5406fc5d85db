"""Class probabilities for image files, prepared exactly as the model's training data was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .data.folder import _DECODE_ERRORS, IMAGE_EXTENSIONS
from .data.preprocess import InputSpec, prepare_image
from .model import ViT


@dataclass
class Loaded:
    model: ViT
    classes: list[str]
    spec: InputSpec


def load_for_inference(path: str | Path) -> Loaded:
    """A run directory, a vitkit model directory, or (through vitkit.load) another library's
    checkpoint, with its class names and input spec (defaults when the file has none)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        from .checkpoint import read_config

        meta = read_config(path)
        if "model" in meta:
            from .checkpoint import load_pretrained

            model, meta = load_pretrained(path)
            return _with_meta(model, meta)
    try:
        from .loading import load
    except ImportError:
        raise ValueError(f"{path}: not a vitkit model directory (config.json + model.safetensors)") from None
    loaded = load(path)
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    return _with_meta(model, {})


def _with_meta(model: ViT, meta: dict) -> Loaded:
    c = model.config
    classes = meta.get("classes") or [str(i) for i in range(c.num_classes)]
    if "data" in meta:
        spec = InputSpec.from_dict(meta["data"])
    else:
        spec = InputSpec(c.image_hw, c.num_channels, [0.5] * c.num_channels, [0.5] * c.num_channels)
    return Loaded(model.eval(), list(classes), spec)


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and the image files inside any directory (sorted, recursive)."""
    out = []
    for p in map(Path, inputs):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    if not out:
        raise ValueError(f"no images found in {', '.join(map(str, inputs))}")
    return out


@torch.no_grad()
def predict_files(loaded: Loaded, files: list[Path], topk: int = 5, batch_size: int = 64,
                  precision: str = "auto") -> list[dict]:
    """Top-k classes with probabilities for each file; unreadable files get an "error" entry.

    precision "auto" runs bf16 autocast where the hardware has native bf16 (norms and
    softmax stay in fp32), else fp32.
    """
    from .evaluation import autocast, inference_precision

    device = next(loaded.model.parameters()).device
    precision = inference_precision(precision, device)
    topk = min(topk, len(loaded.classes))
    results: list[dict] = []
    batch, names = [], []

    def flush():
        if not batch:
            return
        with autocast(device, precision):
            probs = loaded.model.predict_proba(torch.stack(batch).to(device))
        p, idx = probs.topk(topk, dim=1)
        for name, pi, ii in zip(names, p.tolist(), idx.tolist(), strict=True):
            results.append({"file": str(name), "top": [{"class": loaded.classes[i], "index": i,
                                                        "probability": round(q, 6)} for q, i in zip(pi, ii,
                                                                                                      strict=True)]})
        batch.clear()
        names.clear()

    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                batch.append(prepare_image(im, loaded.spec))
                names.append(f)
        except _DECODE_ERRORS as e:
            flush()
            results.append({"file": str(f), "error": f"cannot read image: {e}"})
            continue
        if len(batch) == batch_size:
            flush()
    flush()
    return results
