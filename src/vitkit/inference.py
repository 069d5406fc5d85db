"""Preparing a model for inference: the one preparation that prediction, evaluation,
features, serving and the benchmarks share.

vitkit.precision decides the precision; this module acts on it. It stands above vitkit.export
because in fp32 on a CPU the prepared model may be the model's ONNX graph run by onnxruntime
(vitkit.export.route).
"""

from __future__ import annotations

import torch

from .compile import compile_model
from .export.route import onnx_engine


def for_inference(model: torch.nn.Module, precision: str, compile: bool | str = "auto",
                  engine: str = "torch", images: int | None = None) -> torch.nn.Module:
    """Prepare a model for inference at `precision` and return what to run: the one
    preparation that prediction, evaluation and serving share.

    The model is put in eval mode in place. For bf16, linear and convolution weights are stored
    in bf16 once, instead of autocast casting them again on every forward; norms, embeddings
    and the residual stream stay fp32, so under autocast the results are the same as with fp32
    weights. `compile` ("auto", True, False) is vitkit.compile's choice of torch.compile.
    `engine` is vitkit.export.route's: with "auto" (what predict, evaluate and serve pass) or
    "onnx", fp32 on a CPU may return the model's ONNX graph run by onnxruntime (`images`: the
    work to come, None for no end); with "torch" (the default here) it is `model`, prepared.
    Calling this again changes nothing.
    """
    model.eval()
    routed = onnx_engine(model, precision, engine, compile, images)
    if routed is not None:
        return routed
    if precision == "bf16":
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.to(torch.bfloat16)
    compile_model(model, compile, label="model for inference")
    return model
