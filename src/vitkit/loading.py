"""One way to open a model: every command and the library come here.

``open_model(source)`` takes a vitkit run or model folder, a Hugging Face folder (written by
transformers or by vitkit), a timm / torchvision / official .npz file, an exported .onnx file
or a Hugging Face Hub id (from the local cache, else downloaded: vitkit.hub), and returns the
model with its class names, its input spec (size, channels, mean/std, resize rule) and the
load report. What a file does not record (heads, classes, normalization) comes from
LoadOptions, which every command takes as ``--load.KEY``; otherwise the report names the
default used. ``load`` (the model alone), ``load_with_report`` (the model and the report) and
``convert`` (another file format) go through ``open_model`` too.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .checkpoint import check_output_file, check_output_folder
from .files import replace_folder
from .formats.reader import CONFIG_FIELDS, LoadReport, load_checkpoint
from .formats.writer import EXPORT_FORMATS, write_model, writes_folder
from .model import ViT
from .opened import OpenedModel
from .posemb import ResizeMode
from .presets import get_preset, input_spec, stored_source

__all__ = ["LoadOptions", "LoadReport", "OpenedModel", "convert", "load", "load_with_report", "open_model",
           "resolve"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadOptions:
    """What a checkpoint may not record, given on the command line as --load.KEY.

    Attributes:
        num_heads: attention heads (timm and torchvision files do not store them).
        pool: cls or mean, for timm files that pool by global average.
        classes: class names in output order (files that store none get "0", "1", ...).
        mean: per-channel normalization mean (default: the preset's, else stored, else 0.5).
        std: per-channel normalization std (default: the preset's, else stored, else 0.5).
        preprocess: how images are prepared (mean, std, crop, interpolation), over what the files
            stored: a preset (imagenet, deit, inception, clip; none or vitkit: vitkit's defaults)
            or a timm model name whose pretrained config timm holds (deit_tiny_patch16_224).
        strict: refuse missing, unexpected or mis-shaped keys; false loads what fits.
        offline: open Hub ids from the local cache only, never downloading (as HF_HUB_OFFLINE=1).
    """

    num_heads: int | None = None
    pool: Literal["cls", "mean"] | None = None
    classes: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    preprocess: str | None = None
    strict: bool = True
    offline: bool = False

    def overrides(self) -> dict:
        return {k: v for k, v in dict(num_heads=self.num_heads, pool=self.pool).items() if v is not None}


def resolve(source: str | Path, offline: bool = False) -> Path:
    """A local path, or the folder of a Hugging Face Hub id: from the local cache, else
    downloaded into it (never with offline=True or HF_HUB_OFFLINE=1)."""
    path = Path(source)
    if path.exists():
        return path
    if not _HUB_ID.match(str(source)):
        raise FileNotFoundError(f"{path}: no such file or directory")
    owner = str(source).split("/")[0]
    if Path(owner).is_dir():  # runs/nomodel: a mistyped local path, not a Hub id
        raise FileNotFoundError(f"{path}: no such file or directory (in the local folder {owner}/)")
    from .hub import hub_folder

    return hub_folder(str(source), offline)


def load_with_report(path: str | Path, *, image_size: int | tuple[int, int] | None = None,
                     num_classes: int | None = None, resize_mode: ResizeMode = "bicubic", strict: bool = True,
                     keep_pre_logits: bool = False, drop_zero_head: bool = True, **overrides: Any
                     ) -> tuple[ViT, LoadReport]:
    """`open_model`'s model (in eval mode) and load report alone; the arguments are `load`'s."""
    opened = open_model(path, LoadOptions(strict=strict), image_size=image_size, num_classes=num_classes,
                        resize_mode=resize_mode, keep_pre_logits=keep_pre_logits,
                        drop_zero_head=drop_zero_head, **overrides)
    return opened.model, opened.report


def load(path: str | Path, *, image_size: int | tuple[int, int] | None = None, num_classes: int | None = None,
         resize_mode: ResizeMode = "bicubic", strict: bool = True, keep_pre_logits: bool = False,
         drop_zero_head: bool = True, verbose: bool = False, **overrides: Any) -> ViT:
    """`open_model`'s model alone: a ViT from an official .npz, a timm / torchvision / Hugging
    Face checkpoint, a vitkit model folder or a Hub id, the architecture inferred from the tensors.

    Args:
        path: a file (.npz, .pth/.pt/.bin, .safetensors), a folder (vitkit, Hugging Face,
            timm) or a Hub id such as "google/vit-base-patch16-224" (downloaded unless cached).
        image_size: build the model for this input size; learned position embeddings are
            2D-interpolated to the new patch grid (paper Section 3.2).
        num_classes: when it differs from the checkpoint's, the head is replaced by a
            zero-initialized one (and the pre-logits layer dropped unless keep_pre_logits).
        resize_mode: "bicubic", "bilinear", or "jax" (the official code's scipy zoom, order 1).
        strict: refuse missing, unexpected or mis-shaped keys; False loads what fits and
            lists the rest in the report.
        keep_pre_logits: keep the tanh pre-logits layer when a new head is requested.
        drop_zero_head: drop an all-zero head of an .npz file (ImageNet-21k releases).
        verbose: print the load report.
        overrides: ViTConfig fields the files cannot tell (num_heads, pool) or training
            settings (dropout, drop_path).
    """
    model, report = load_with_report(
        path, image_size=image_size, num_classes=num_classes, resize_mode=resize_mode, strict=strict,
        keep_pre_logits=keep_pre_logits, drop_zero_head=drop_zero_head, **overrides)
    if verbose:
        print(report)
    return model


def open_model(source: str | Path, options: LoadOptions | None = None, *, device: str | torch.device = "cpu",
               image_size: int | tuple[int, int] | None = None, num_classes: int | None = None,
               resize_mode: ResizeMode = "bicubic", keep_pre_logits: bool = False,
               drop_zero_head: bool = True, **overrides: Any) -> OpenedModel:
    """Open any model vitkit reads for use: the model (eval mode, on `device`), its class
    names, its input spec and the load report. The one way to open a model: every command
    comes here, and `load`, `load_with_report` and `vitkit.serve.open_for_serving` are
    shorter spellings of it.

    `options` carries what the files may not record; `image_size`, `num_classes`,
    `resize_mode`, `keep_pre_logits` and `drop_zero_head` build a changed model (see `load`);
    `overrides` are further ViTConfig fields (num_heads, pool, dropout, drop_path, ...).
    """
    options = options or LoadOptions()
    preset = get_preset(options.preprocess) if options.preprocess else None  # refused before any reading
    if str(source).lower().endswith(".onnx"):
        from .formats.exported import open_onnx

        opened = open_onnx(source)
        if preset is not None or options.mean is not None or options.std is not None:
            c = opened.spec.channels
            opened.spec, opened.spec_source, notes = input_spec(
                opened.spec.image_size, c, opened.spec.to_dict(), "onnx", preset, options.mean, options.std)
            opened.report.notes += notes
        else:
            opened.spec_source = stored_source("onnx")
        return opened
    bad = sorted(set(overrides) - CONFIG_FIELDS)
    if bad:
        raise ValueError(f"unknown load option(s): {', '.join(bad)}")
    path = resolve(source, options.offline)
    model, report = load_checkpoint(ViT, path, image_size=image_size, num_classes=num_classes,
                                    resize_mode=resize_mode, strict=options.strict,
                                    keep_pre_logits=keep_pre_logits, drop_zero_head=drop_zero_head,
                                    **{**options.overrides(), **overrides})
    cfg = model.config
    classes = _classes(options.classes, report, cfg.num_classes, source)
    stored = dict(report.extra.get("data") or {})
    if len(stored.get("mean", [None] * cfg.num_channels)) != cfg.num_channels:
        stored = {}
    stored.pop("image_size", None)  # the model's own input size is the truth
    spec, spec_source, notes = input_spec(cfg.image_hw, cfg.num_channels, stored, report.format, preset,
                                          options.mean, options.std)
    report.notes += notes
    if options.classes:
        report.extra["classes"] = list(classes)
    if options.mean is not None or options.std is not None or preset is not None or "mean" in stored:
        report.extra["data"] = {**report.extra.get("data", {}), **spec.to_dict()}  # saved with the model
    extra = {k: v for k, v in report.extra.items() if k not in ("classes", "data")}
    name = str(source) if not Path(source).exists() else (Path(source).resolve().name or str(source))
    return OpenedModel(model.to(device).eval(), classes, spec, report, str(source), name, extra, spec_source)


def _classes(given: list[str] | None, report: LoadReport, n: int, source) -> list[str]:
    if given:
        if len(given) != n:
            raise ValueError(f"{source}: {len(given)} class names given for a model with {n} outputs")
        return list(given)
    stored = report.extra.get("classes")
    if stored and len(stored) == n:
        return [str(c) for c in stored]
    if n:
        report.notes.append(f"class names not recorded: outputs are named 0..{n - 1} (pass --load.classes)")
    return [str(i) for i in range(n)]


def convert(src: str | Path, out: str | Path, to: str = "vitkit", naming: str = "vit_jax",
            options: LoadOptions | None = None, overwrite: bool = False, **load_options: Any
            ) -> tuple[Path, LoadReport]:
    """Open any supported checkpoint (options as for `open_model`) and write it as `to`
    (vitkit, timm, hf or npz); class names and input spec go along where the format holds them.

    `out` is never the source, and a folder that is not empty is replaced (whole, once the new
    one is written) only with overwrite: a run converted over stays a run."""
    if to not in EXPORT_FORMATS:
        raise ValueError(f"unknown output format {to!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    folder = writes_folder(to, out)
    if folder:
        check_output_folder(out, overwrite, option=None, reading=(src,))
    else:
        check_output_file(out, option=None, reading=(src,))
    if "strict" in load_options:
        options = dataclasses.replace(options or LoadOptions(), strict=load_options.pop("strict"))
    opened = open_model(src, options, **load_options)
    report = opened.report
    notes: list[str] = []

    def write(where: Path) -> None:
        notes.extend(write_model(opened.model, where, to=to, naming=naming, extra=_extra_for(opened))[1])

    if folder and out.exists():
        replace_folder(out, write)
    else:
        write(out)
    report.notes += notes
    return out, report


def _extra_for(opened: OpenedModel) -> dict:
    """What vitkit's config.json stores beside the model: input preparation and class names,
    when the source recorded them or they were given (--load.mean/std, --load.preprocess)."""
    extra = dict(opened.report.extra)
    if "data" in extra:
        extra["data"] = opened.spec.to_dict()
    return extra
