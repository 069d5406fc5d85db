"""fp32 inference on a CPU through ONNX Runtime, where that was measured to pay.

In fp32 on a CPU, ONNX Runtime runs vitkit's own exported graph faster than eager PyTorch
runs the model (benchmarks/export_speed.py; the figures are in benchmarks/README.md). So
where inference resolves to fp32 on a CPU (no native bf16, or fp32 asked for), the runner of
vitkit.inference.prepare with engine "auto" (what predict, evaluate and serve pass) runs the
model's ONNX graph by onnxruntime instead of the module: same weights, same preprocessing,
logits equal to eager fp32 within float rounding.

The graph is exported once per weights into the user cache (vitkit.cache:
<cache>/onnx/<fingerprint>.onnx). The key is the fingerprint of every weight, the config and
the export format, so changed weights are a new file and a stale graph is never run; a
cached file that does not open is exported again. Exporting takes seconds (EXPORT_PAYS_AFTER),
so engine "auto" exports only for work that repays it and otherwise
runs eagerly until a graph is cached.

engine "auto": the route when the device is the CPU, the precision fp32, the model a plain
vitkit ViT (no adapters or wrappers), torch.compile not asked for, onnxruntime and the
exporter installed, and the graph cached already or the job at least EXPORT_PAYS_AFTER
images (serving, whose work has no end, counts as enough); "torch": never; "onnx": whenever
it can run, with a one-line error naming what stops it. "openvino": the same graph compiled
by OpenVINO (the openvino extra; compiled blobs cached beside the graph). "auto" runs
onnxruntime: on the CPU measured, OpenVINO f32 was not faster but in one case
(benchmarks/README.md), so OpenVINO is loaded only when asked for.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Literal, get_args

import torch

from ..cache import default_cache_dir, model_fingerprint
from ..formats.openvino import available as openvino_available
from ..model import ViT
from ..notices import VitkitWarning, first_line

Engine = Literal["auto", "torch", "onnx", "openvino"]
ENGINES = get_args(Engine)
ROUTE_FORMAT = 1  # bump when the exported graph changes, so old cached graphs are not run
# Images after which exporting once (seconds) costs less than eager fp32 loses: measured, the
# export paid after a few hundred to about 1,500 images at batch 1 (benchmarks/README.md).
EXPORT_PAYS_AFTER = 1000


def route_problem(model: torch.nn.Module, precision: str, compile: bool | str = "auto") -> str | None:
    """Why `model` cannot run through ONNX Runtime at `precision`, or None when it can."""
    from ..compile import compile_wanted

    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if device.type != "cpu":
        return f"the model is on {device}, and the ONNX route runs on the CPU"
    if precision != "fp32":
        return f"inference runs in {precision}, and the ONNX graph in fp32"
    if type(model) is not ViT:
        return f"{type(model).__name__} is not a plain vitkit ViT"
    if not model.config.num_classes:
        return "the model has no classifier head"
    if compile_wanted(compile, device):
        return "torch.compile was asked for"
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return "onnxruntime and onnxscript are not installed (pip install 'vitkit[export]')"
    return None


def graph_path(model: ViT, any_size: bool = False) -> Path:
    """Where the route's graph for these weights (taking any H and W, or its own size) is cached."""
    from .onnx import OPSET

    extra = {"route": ROUTE_FORMAT, "opset": OPSET} | ({"any_size": 1} if any_size else {})
    key = model_fingerprint(model, extra)[:32]
    return default_cache_dir() / "onnx" / f"{key}.onnx"


def onnx_engine(model: torch.nn.Module, precision: str, engine: Engine | str = "auto",
                compile: bool | str = "auto", images: int | None = None, any_size: bool = False
                ) -> torch.nn.Module | None:
    """The OnnxViT that runs `model` by onnxruntime when `engine` says so (module docstring),
    else None; `images`: how many images the caller will run (None: no end, as in serving);
    any_size: the graph takes any H and W the patch divides (inputs of sizes of their own)."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "torch":
        return None
    problem = route_problem(model, precision, compile)
    if problem is None and engine == "openvino" and not openvino_available():
        problem = "openvino is not installed (pip install 'vitkit[openvino]')"
    if problem:
        if engine != "auto":
            raise ValueError(f"engine {engine}: {problem}")
        return None
    path = graph_path(model, any_size)
    if not path.is_file() and engine == "auto" and images is not None and images < EXPORT_PAYS_AFTER:
        return None
    try:
        if path.is_file():
            try:
                return _open(path, model, engine)
            except ValueError:
                path.unlink(missing_ok=True)  # a damaged cache file: export it again
        _export(model, path, any_size)
        return _open(path, model, engine)
    except Exception as e:
        if engine != "auto":
            raise ValueError(f"engine {engine}: {first_line(e)}") from None
        warnings.warn(f"the ONNX route failed ({first_line(e)}); running eager PyTorch", VitkitWarning,
                      stacklevel=2)
        return None


def _open(path: Path, model: ViT, engine: str) -> torch.nn.Module:
    """The cached graph as an OnnxViT (or, for engine "openvino", an OpenVINOViT) on torch's
    intra-op thread count (ValueError if unreadable)."""
    from ..formats.exported import open_onnx

    if engine != "openvino":  # "onnx", or "auto"
        return open_onnx(path, torch.get_num_threads()).model
    from ..formats.openvino import OpenVINOViT, compile_file

    threads, blobs = torch.get_num_threads(), path.parent / "openvino"
    try:
        compiled = compile_file(path, threads, blobs)
    except Exception as e:  # OpenVINO's errors on a damaged file
        raise ValueError(f"{path}: OpenVINO cannot compile it ({first_line(e)})") from None
    return OpenVINOViT(compiled, model.config, {}, path, threads, blobs).eval()


def _export(model: ViT, path: Path, any_size: bool = False) -> None:
    """Export the fp32 graph of `model` to `path` as `vitkit export` does, timing it once on
    stderr; the class names and input spec in its metadata are placeholders (the caller holds
    the real ones)."""
    from ..data.preprocess import InputSpec
    from . import export_model

    start = time.perf_counter()
    c = model.config
    spec = InputSpec(c.image_hw, c.num_channels, [0.5] * c.num_channels, [0.5] * c.num_channels)
    export_model(model, [str(i) for i in range(c.num_classes)], spec, path, dynamic_size=any_size)
    print(f"vitkit: fp32 inference runs through ONNX Runtime; exported the graph once in "
          f"{time.perf_counter() - start:.1f} s to {path}", file=sys.stderr, flush=True)
