"""Taking a model out of vitkit: ONNX (onnxruntime, optionally int8) and torch.export files
that hold the weights, the graph and everything needed to predict (classes, input spec,
ViTConfig), with the image size fixed at export (ONNX: or dynamic, any multiple of the patch
size); or, with `features`, an ONNX file of the
feature extractor (vitkit.export.features) for tools that need embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..data.preprocess import InputSpec
from ..model import ViT
from ..multilabel import KEY as MULTILABEL_KEY
from ..representation import FeatureOptions, resolve_options
from .prepare import calibration_batch, export_ready, metadata

Format = Literal["onnx", "pt2"]


def export_model(
    model: ViT,
    classes: list[str],
    spec: InputSpec,
    out: str | Path,
    format: Format = "onnx",
    image_size: int | tuple[int, int] | None = None,
    int8: bool = False,
    calibration=None,
    features: FeatureOptions | None = None,
    multilabel: dict | None = None,
    dynamic_size: bool = False,
) -> tuple[Path, list[str]]:
    """Write `model` as an ONNX or .pt2 file; returns the path and notes on what was done.

    Args:
        model: a vitkit ViT (pure or hybrid), in any precision; it is copied in fp32 eval mode.
        classes: class names, in output order.
        spec: how images become inputs (channels, mean, std); its size is replaced by the
            export image size.
        out: the file to write.
        format: "onnx" (onnxruntime) or "pt2" (torch.export archive).
        image_size: the input size the graph is fixed to (default: the model's own); learned
            position embeddings are resampled once, before export.
        int8: ONNX only: quantize to int8 for CPUs (see vitkit.export.quantize).
        calibration: real images for int8 calibration: a uint8 tensor (N, C, H, W), or a list
            of PIL images or image paths; they are prepared with `spec`.
        features: ONNX only: export the feature extractor with these options (block, token,
            final norm; batch_size and precision do not apply: the graph is fp32) instead of
            the classifier. Outputs `features` (B, D), as vitkit embed computes them, and
            `tokens` (B, D, h, w), the patch tokens of that block; no head is needed.
        multilabel: a multi-label model's config.json entry ({"threshold": t}), stored in the
            metadata so that the file's readers answer sigmoid probabilities and its tags.
        dynamic_size: ONNX only: H and W are symbolic in the graph, so one file takes any image
            size the patch size divides (the position embeddings are resampled in the graph from
            H and W); image_size then is the default size the metadata's input spec names.
    """
    out = Path(out)
    if format not in ("onnx", "pt2"):
        raise ValueError(f"unknown export format {format!r}: expected onnx or pt2")
    if int8 and format != "onnx":
        raise ValueError("int8 export is for ONNX files (onnxruntime quantization)")
    if dynamic_size and format != "onnx":
        raise ValueError(f"{out}: a dynamic image size is for ONNX files (--format onnx), not {format}")
    if features is not None and format != "onnx":
        raise ValueError(f"{out}: a features export is an ONNX file (--format onnx), not {format}")
    ready, notes = export_ready(model, image_size, head=features is None)
    if spec.any_size and format == "onnx" and not dynamic_size:
        dynamic_size = True
        notes.append("images are read at sizes of their own (resize keep): the graph takes any image size")
    meta = metadata(ready.config, classes, spec, notes=notes)
    if dynamic_size:
        meta.update(dynamic_size=True, patch_size=ready.config.patch_size)
    if multilabel and features is None:
        meta[MULTILABEL_KEY] = dict(multilabel)
    if features is not None:
        from .features import OUTPUT_NAMES, feature_graph

        ready, stored = feature_graph(ready, features)
        meta.update(features=stored, outputs=list(OUTPUT_NAMES), output_name=OUTPUT_NAMES[0])
        notes.append(f"features export: the {stored['token']} token of block {stored['layer']}"
                     f"{' after the final norm' if stored['norm'] else ''} as features (B, "
                     f"{ready.config.hidden_size}) and that block's patch tokens as tokens (B, "
                     f"{ready.config.hidden_size}, {ready.config.grid_size[0]}, {ready.config.grid_size[1]})")
    if format == "pt2":
        from .pt2 import export_pt2

        export_pt2(ready, meta, out)
        return out, notes
    from .onnx import OPSET, export_onnx

    h, w = ready.config.image_hw
    if dynamic_size:
        notes.append(f"ONNX opset {OPSET}, dynamic batch axis, dynamic image size (H and W multiples of "
                     f"{ready.config.patch_size}; position embeddings resampled in the graph), "
                     f"default {h}x{w}")
    else:
        notes.append(f"ONNX opset {OPSET}, dynamic batch axis, image {h}x{w} fixed")
    if not int8:
        export_onnx(ready, meta, out, dynamic_size=dynamic_size)
        return out, notes
    from .quantize import quantize_export

    return quantize_export(ready, meta, out, calibration, notes, dynamic_size=dynamic_size)


@dataclass
class Exported:
    """What export_file did: the file, notes on the conversion, and the check against eager fp32
    (None when not verified) with what it was run on."""

    path: Path
    notes: list[str]
    check: object | None = None
    checked_on: str = ""
    kind: str = ""  # the format and its options, as the closing line names them

    def lines(self) -> list[str]:
        """What `vitkit export` prints: the notes, the file with its size, and the check."""
        size = self.path.stat().st_size / 2**20
        lines = [f"note: {note}" for note in self.notes]
        lines.append(f"wrote {self.path} ({size:.2f} MiB, {self.kind})")
        if self.check is not None:
            lines.append(f"check against eager fp32 on {self.checked_on}: {self.check}")
        return lines


def export_file(model: str | Path, out: str | Path, format: Format = "onnx", image_size: int | None = None,
                int8: bool = False, calibration: str | Path | None = None, calibration_limit: int = 256,
                verify: bool = True, options=None, features: FeatureOptions | bool = False,
                dynamic_size: bool = False) -> Exported:
    """Open `model` (anything vitkit.open_model opens that holds a vitkit ViT), write it with
    export_model and, with verify, run the written file on calibration images (else four random
    inputs) and compare it with the eager fp32 model. features: True or FeatureOptions for a
    features export (see export_model); dynamic_size: see export_model."""
    import dataclasses

    import torch

    from ..checkpoint import check_output_file
    from ..data.folder import list_images
    from ..loading import open_model
    from .verify import check_features_file, check_file

    check_output_file(out, option=None, reading=(model,))
    opened = open_model(model, options)
    if not isinstance(opened.model, ViT):
        raise ValueError(f"{model}: exporting needs a vitkit model (a run, model folder or checkpoint), "
                         f"not {type(opened.model).__name__}")
    images = list_images([calibration])[:calibration_limit] if calibration else None
    if features is True:
        features = FeatureOptions()
    features = features or None
    if features is not None:  # checked here too, so that the error names the model
        resolve_options(opened.model, features, str(model))
    path, notes = export_model(opened.model, opened.classes, opened.spec, Path(out), format, image_size,
                               int8, images, features, opened.extra.get(MULTILABEL_KEY), dynamic_size)
    kind = ", ".join([format] + [name for name, on in (("int8", int8), ("features", features),
                                                       ("dynamic size", dynamic_size)) if on])
    done = Exported(path, notes, kind=kind)
    if not verify:
        return done
    spec = opened.spec
    if image_size is not None:
        spec = dataclasses.replace(spec, image_size=(image_size, image_size))
    if images:
        x, done.checked_on = calibration_batch(images, spec), "calibration images"
    else:
        x = torch.randn(4, spec.channels, *spec.image_size, generator=torch.Generator().manual_seed(0))
        done.checked_on = "random inputs"
    done.check = (check_file(path, opened.model, x) if features is None
                  else check_features_file(path, opened.model, features, x))
    return done


__all__ = ["Exported", "export_file", "export_model", "calibration_batch", "export_ready", "metadata"]
