"""ONNX export through torch's current exporter (torch.export + onnxscript, `dynamo=True`).

The graph takes the normalized float batch (B, C, H, W) with a dynamic batch axis and a
fixed image size (or, with dynamic_size, any H and W that the patch size divides: the graph
then resamples the position embeddings to the input's patch grid itself), and returns fp32
logits (B, classes), or for a features export the outputs the metadata names
(vitkit.export.features). The vitkit metadata (classes, input spec, ViTConfig) is stored as
JSON in the model's metadata_props, so the file alone is enough to predict.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..files import atomic_write_bytes
from ..formats.exported import METADATA_KEY
from ..model import ViT
from .prepare import INPUT_NAME, OUTPUT_NAME, dumps

# Opset 20 is the exporter's default and has Gelu as one op; onnxruntime >= 1.17 runs it.
OPSET = 20
_PROTO_LIMIT = 2**31 - 2**26  # protobuf's 2 GiB limit, with room for the graph itself


def batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=65536)


def input_dims(patch_size: int, dynamic_size: bool = False) -> dict[int, object]:
    """The symbolic axes of the input: the batch, and with dynamic_size H and W as multiples of
    the patch size (so the traced graph needs no divisibility check and holds none)."""
    dims: dict[int, object] = {0: batch_dim()}
    if dynamic_size:
        dims[2] = patch_size * torch.export.Dim("grid_h", min=1, max=4096)
        dims[3] = patch_size * torch.export.Dim("grid_w", min=1, max=4096)
    return dims


def export_onnx(model: ViT | torch.nn.Module, meta: dict, out: Path, opset: int = OPSET,
                dynamic_size: bool = False) -> Path:
    """Trace the eager fp32 model (eval mode, from prepare.export_ready, or a FeatureGraph of
    it) into an ONNX file whose outputs are named as in meta["outputs"] (default: logits);
    dynamic_size: H and W symbolic too (any multiple of the patch size)."""
    x = torch.zeros(2, model.config.num_channels, *model.config.image_hw)
    dims = input_dims(model.config.patch_size, dynamic_size)
    outputs = list(meta.get("outputs", [OUTPUT_NAME]))
    with warnings.catch_warnings(), torch.no_grad(), torch.autocast("cpu", enabled=False):
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        program = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=outputs, dynamic_shapes=(dims,), optimize=True,
            verbose=False, report=False)
    # Fold every weight-only computation (e.g. the slices of the last block's qkv weight that
    # the class-token path takes) into initializers: no per-call work on weights, and each
    # weight MatMul reads a constant, which int8 quantization needs. The exporter's own pass
    # folds only tensors of up to 8192 elements.
    import onnxscript.optimizer

    onnxscript.optimizer.optimize(program.model, input_size_limit=2**31, output_size_limit=2**31)
    program.model.metadata_props[METADATA_KEY] = dumps(meta)
    program.model.producer_name = "vitkit"
    out.parent.mkdir(parents=True, exist_ok=True)
    if sum(p.numel() * 4 for p in model.parameters()) < _PROTO_LIMIT:
        atomic_write_bytes(out, program.model_proto.SerializeToString())
    else:  # weights beside the graph, in <out>.data
        program.save(str(out), external_data=True)
    return out


def set_metadata(path: Path, meta: dict, out: Path | None = None) -> Path:
    """Write the vitkit metadata into an ONNX file (after a tool that drops it), to `out`
    (default: in place)."""
    import onnx

    proto = onnx.load(str(path))
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    proto.metadata_props.add(key=METADATA_KEY, value=dumps(meta))
    proto.producer_name = "vitkit"
    return atomic_write_bytes(out or path, proto.SerializeToString())
