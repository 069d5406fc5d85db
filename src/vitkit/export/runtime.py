"""Exported ONNX files run by onnxruntime: their reader is vitkit.formats.exported, beside the
other formats and below vitkit.loading, which opens .onnx files through it. The names stay
importable here, where the files are written."""

from ..formats.exported import OnnxFeatures, OnnxViT, open_onnx, refusal, session

__all__ = ["OnnxFeatures", "OnnxViT", "open_onnx", "refusal", "session"]
