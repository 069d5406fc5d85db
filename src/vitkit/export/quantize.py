"""int8 ONNX files for CPUs, with onnxruntime.quantization.

Chosen by measurement on the trained CIFAR-10 recipe model (10,000 test images) and on S/16
(`python benchmarks/export_speed.py --variants`; tables in benchmarks/README.md, "Export"):
DYNAMIC quantization of the encoder's weight products (qkv, attention output, MLP) with
per-output-channel int8 weights; activations are quantized per batch at run time, so no
calibration images are needed and none can be unrepresentative. What stays float, and why:
- the residual Adds, LayerNorm, softmax and GELU: quantizing them too (static QDQ) cost 0.3
  points of accuracy and ran slower;
- the attention products QK^T and AV (activation x activation): quantizing them changed 0.3
  points more predictions and ran the CIFAR model slower (one more quantization per product);
- the patch embedding and a hybrid stem's convolutions: onnxruntime's ConvInteger made the
  CIFAR model no faster than fp32 and changed 1.4 points more predictions;
- the classifier head: small, and it decides the top-1.
Static quantization (QDQ, ranges calibrated on real images) reached the same accuracy but ran
slower; it stays available as mode="static". The float Conv and Gemm weights are stored as
fp16 and folded back to fp32 constants when onnxruntime loads the file, so the file is about
a quarter of the fp32 one at no cost per call.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..model import ViT
from .prepare import INPUT_NAME, calibration_batch

Mode = Literal["dynamic", "static"]
# Parts of the graph that stay float by default (see the module docstring).
KEEP_FLOAT = ("conv", "head", "attention")
ROLES = ("conv", "head", "attention", "qkv", "proj", "mlp")


def graph_roles(model) -> dict[str, list[str]]:
    """Node names of an exported ViT by role: conv (patch embedding and stem), head (weight
    products after the final LayerNorm: pre-logits and classifier), attention (activation x
    activation MatMuls), and the weight MatMuls of the encoder: qkv, proj (attention output)
    and mlp (fc1, fc2), told apart by what feeds them."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    norms = [i for i, n in enumerate(g.node) if n.op_type == "LayerNormalization"]
    last_norm = norms[-1] if norms else -1
    roles: dict[str, list[str]] = {r: [] for r in ROLES}

    def source(name: str):
        """The first node upstream of `name` that is not a reshuffle of the same values."""
        node = producer.get(name)
        while node is not None and node.op_type in ("Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze"):
            node = producer.get(node.input[0])
        return node

    for i, n in enumerate(g.node):
        if n.op_type == "Conv":
            roles["conv"].append(n.name)
        elif n.op_type in ("MatMul", "Gemm"):
            if not any(x in inits for x in n.input):
                roles["attention"].append(n.name)
            elif i > last_norm:
                roles["head"].append(n.name)
            else:
                src = source(n.input[0])
                kind = src.op_type if src is not None else ""
                if kind == "LayerNormalization":
                    roles["mlp" if any(".norm2." in x for x in src.input) else "qkv"].append(n.name)
                elif kind == "Gelu":
                    roles["mlp"].append(n.name)
                else:
                    roles["proj"].append(n.name)
    return roles


def store_weights_fp16(model, nodes: set[str]) -> int:
    """Store the weights of the given float Conv / Gemm / MatMul nodes as fp16, each followed
    by a Cast to fp32. onnxruntime folds the Cast into an fp32 constant when the session
    loads, so they compute exactly as before at no cost per call (a DequantizeLinear in
    their place would not be folded: measured, the convolutions ran at half speed); the file
    holds them at half size. Returns how many weights were converted."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    new_nodes, done = [], 0
    for n in g.node:
        if n.name in nodes and n.op_type in ("Conv", "Gemm", "MatMul"):
            name = n.input[1]
            init = inits.get(name)
            if init is not None and uses.get(name) == 1 and init.data_type == TensorProto.FLOAT:
                w = numpy_helper.to_array(init)
                g.initializer.remove(init)
                g.initializer.append(numpy_helper.from_array(w.astype(np.float16), f"{name}_fp16"))
                new_nodes.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT,
                                                  name=f"{name}_to_fp32"))
                done += 1
        new_nodes.append(n)
    del g.node[:]
    g.node.extend(new_nodes)
    return done


def quantize_onnx(src: Path, dst: Path, mode: Mode = "dynamic", keep_float: Iterable[str] = KEEP_FLOAT,
                  calibration: torch.Tensor | None = None, activations: Literal["u8", "s8"] = "u8",
                  all_ops: bool = False, store_fp16: bool = True) -> Path:
    """Quantize an fp32 vitkit ONNX file to int8 with per-channel int8 weights.

    Args:
        mode: dynamic (activation ranges per batch at run time) or static (QDQ; ranges
            calibrated once, MinMax, on `calibration`: normalized floats (N, C, H, W)).
        keep_float: graph roles (see graph_roles) whose products stay float.
        activations: static mode: u8 (asymmetric) or s8 (symmetric) activations.
        all_ops: static mode: quantize every op onnxruntime can (residual Adds, LayerNorm,
            Softmax, GELU, reshapes), not only the products.
        store_fp16: store the weights of the float Conv / Gemm layers (kept float by
            keep_float) as fp16, for a smaller file; they are computed in fp32.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    keep = set(keep_float)
    unknown = keep - set(ROLES)
    if unknown:
        raise ValueError(f"unknown graph roles {sorted(unknown)}: expected some of {', '.join(ROLES)}")
    with tempfile.TemporaryDirectory() as tmp:
        pre, mid = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        # shape inference and graph cleanup, as recommended; onnxruntime's symbolic shape
        # inference mistakes the ONNX Attention op (opset 23) for its own contrib op
        graph = onnx.load(str(src), load_external_data=False).graph
        has_attention = any(n.op_type == "Attention" for n in graph.node)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=has_attention)
        roles = graph_roles(onnx.load(str(pre)))
        exclude = [name for r in keep for name in roles[r]]
        ops = ["MatMul"] + ([] if "conv" in keep else ["Conv"])
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(mid), op_types_to_quantize=ops, per_channel=True,
                             weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                             extra_options={"MatMulConstBOnly": "attention" in keep})
        elif mode == "static":
            if calibration is None or len(calibration) == 0:
                raise ValueError("static int8 quantization needs calibration images")

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.batches = [{INPUT_NAME: np.ascontiguousarray(calibration[i:i + 16].numpy())}
                                    for i in range(0, len(calibration), 16)]
                    self.i = 0

                def get_next(self):
                    self.i += 1
                    return self.batches[self.i - 1] if self.i <= len(self.batches) else None

                def rewind(self):
                    self.i = 0

            op_types = None if all_ops else ops + ([] if "head" in keep else ["Gemm"])
            quantize_static(str(pre), str(mid), Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=True, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QInt8 if activations == "s8" else QuantType.QUInt8,
                            nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"MatMulConstBOnly": "attention" in keep,
                                           "ActivationSymmetric": activations == "s8"})
        else:
            raise ValueError(f"unknown quantization mode {mode!r}: expected dynamic or static")
        model = onnx.load(str(mid))
        if store_fp16:
            store_weights_fp16(model, {n for r in ("conv", "head") if r in keep for n in roles[r]})
        onnx.save(model, str(dst))
    return dst


def quantize_export(model: ViT, meta: dict, out: Path, calibration, notes: list[str],
                    mode: Mode = "dynamic", dynamic_size: bool = False) -> tuple[Path, list[str]]:
    """Export fp32 to a temporary file, quantize it, write it to `out` with the metadata."""
    from .onnx import export_onnx, set_metadata
    from .prepare import InputSpec

    spec = InputSpec.from_dict(meta["input"])
    calib = None if calibration is None else calibration_batch(calibration, spec, limit=1024)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, meta, Path(tmp) / "fp32.onnx", dynamic_size=dynamic_size)
        fp32_size = fp32.stat().st_size
        quantize_onnx(fp32, Path(tmp) / "int8.onnx", mode, calibration=calib)
        notes.append(f"int8: {mode} quantization of the encoder's weight products, per-channel int8 "
                     f"weights; float: {', '.join(KEEP_FLOAT)} (conv and head weights stored as fp16), "
                     f"residual Adds, LayerNorm, softmax, GELU; the fp32 file would be "
                     f"{fp32_size / 2**20:.2f} MiB")
        if calib is not None and mode == "dynamic":
            notes.append("dynamic quantization needs no calibration: the images serve only to check the file")
        set_metadata(Path(tmp) / "int8.onnx", {**meta, "int8": {"mode": mode, "keep_float": list(KEEP_FLOAT)},
                                               "notes": notes}, out)
    return out, notes
