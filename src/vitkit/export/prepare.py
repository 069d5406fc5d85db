"""The eager model an export starts from, and the metadata that travels inside the file
(read back by vitkit.formats.exported).

An exported graph is traced once, so everything that depends on the input size is settled
here: the learned position embeddings are resampled to the export image size before
tracing (with the same resampling the loader uses), so the graph holds a fixed table and
no interpolation. The model is copied in fp32 and eval mode, so neither bf16 inference
weights nor dropout reach the graph.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import torch

from ..config import ViTConfig
from ..data.preprocess import InputSpec
from ..model import ViT
from ..posemb import resample_pos_embed
from ..sizes import hw

FORMAT_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"


def export_ready(model: ViT, image_size: int | tuple[int, int] | None = None, head: bool = True
                 ) -> tuple[ViT, list[str]]:
    """An fp32, eval-mode copy of `model` built for `image_size` (default: its own).

    Learned position embeddings are resampled once (bicubic, the class-token row kept, as
    vitkit.load(..., image_size=...) does); fixed sin-cos ones are rebuilt for the new grid.
    head=False: for a features export, which needs no classifier head.
    """
    if not isinstance(model, ViT):
        raise TypeError(f"expected a vitkit ViT, got {type(model).__name__}")
    config = model.config
    if head and not config.num_classes:
        raise ValueError("the model has no classifier head (num_classes=0): an export outputs logits; "
                         "export its features with --features true")
    notes: list[str] = []
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in model.state_dict().values()
                     if v.is_floating_point()} - {"float32"})
    if dtypes:
        notes.append(f"weights held as {', '.join(dtypes)}: exported as their fp32 values")
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    if image_size is not None and hw(image_size) != config.image_hw:
        target = config.replace(image_size=hw(image_size))
        old, new = config.grid_size, target.grid_size
        if config.pos_embed == "learn":
            sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], new, old, config.num_prefix_tokens)
            notes.append(f"position embeddings resampled {old[0]}x{old[1]} -> {new[0]}x{new[1]} "
                         "(bicubic, class-token row kept) before export")
        elif config.pos_embed == "sincos2d":
            notes.append(f"sin-cos position embeddings rebuilt for the {new[0]}x{new[1]} grid")
        config = target
    out = ViT(copy.deepcopy(config))
    out.load_state_dict(sd)
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval(), notes


def metadata(config: ViTConfig, classes: list[str], spec: InputSpec, **extra) -> dict:
    """What a file needs to predict on its own: classes, input spec and the ViTConfig; `extra`
    adds entries such as "multilabel" ({"threshold": t}: sigmoid per tag, tags over t)."""
    if config.num_classes and len(classes) != config.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {config.num_classes} classes")
    if spec.channels != config.num_channels:
        raise ValueError(f"input spec has {spec.channels} channels, the model {config.num_channels}")
    spec = dataclasses.replace(spec, image_size=config.image_hw)
    return {"format": "vitkit", "version": FORMAT_VERSION, "classes": [str(c) for c in classes],
            "input": spec.to_dict(), "model": config.to_dict(), "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME, **extra}


def dumps(meta: dict) -> str:
    return json.dumps(meta, separators=(",", ":"))


def calibration_batch(images, spec: InputSpec, limit: int | None = None) -> torch.Tensor:
    """Normalized float inputs from a uint8 tensor (N, C, H, W) or a list of PIL images / paths."""
    from PIL import Image

    from ..data.preprocess import normalize, open_image, prepare_image

    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"calibration images: expected a uint8 (N, C, H, W) tensor, got "
                             f"{images.dtype} {tuple(images.shape)}")
        if tuple(images.shape[1:]) != (spec.channels, *spec.image_size):
            raise ValueError(f"calibration images are {tuple(images.shape[1:])}, the export input is "
                             f"{(spec.channels, *spec.image_size)}")
        images = images[:limit] if limit else images
        return normalize(images, spec)
    if spec.any_size:  # one batch: calibration images at the default size, not their own
        spec = dataclasses.replace(spec, resize="crop")
    batch = []
    for item in list(images)[:limit] if limit else images:
        if isinstance(item, Image.Image):
            batch.append(prepare_image(item, spec))
        else:
            with open_image(item) as im:
                batch.append(prepare_image(im, spec))
    if not batch:
        raise ValueError("no calibration images")
    return torch.stack(batch)
