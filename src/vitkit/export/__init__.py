"""Taking a model out of vitkit: ONNX (onnxruntime, optionally int8) and torch.export files
that hold the weights, the graph and everything needed to predict (classes, input spec,
ViTConfig), with the image size fixed at export."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..data.preprocess import InputSpec
from ..model import ViT
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
    """
    out = Path(out)
    if format not in ("onnx", "pt2"):
        raise ValueError(f"unknown export format {format!r}: expected onnx or pt2")
    if int8 and format != "onnx":
        raise ValueError("int8 export is for ONNX files (onnxruntime quantization)")
    ready, notes = export_ready(model, image_size)
    meta = metadata(ready.config, classes, spec, notes=notes)
    if format == "pt2":
        from .pt2 import export_pt2

        export_pt2(ready, meta, out)
        return out, notes
    from .onnx import OPSET, export_onnx

    notes.append(f"ONNX opset {OPSET}, dynamic batch axis, image {ready.config.image_hw[0]}x"
                 f"{ready.config.image_hw[1]} fixed")
    if not int8:
        export_onnx(ready, meta, out)
        return out, notes
    from .quantize import quantize_export

    return quantize_export(ready, meta, out, calibration, notes)


__all__ = ["export_model", "calibration_batch", "export_ready", "metadata"]
