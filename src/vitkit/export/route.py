"""Inference on a CPU through the model's ONNX graph (ONNX Runtime, OpenVINO), where that was
measured to pay.

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
by OpenVINO (the openvino extra; compiled blobs cached beside the graph).

Which runtime is faster depends on the CPU and the model (on a 2-core Zen 3, OpenVINO f32 was
0.55-1.14x onnxruntime; benchmarks/README.md), so where OpenVINO is installed "auto" times
both on this machine, once per graph (a few seconds, kept beside the graph in a .speed.json
keyed by the CPU, the threads and the runtimes' versions), and runs each batch on the one
measured faster at its size: batch 1 for small batches, batch 8 for the others.

Where the CPU computes bf16 natively and the precision is "auto", PyTorch bf16 is the
baseline the graph must beat: the caller hands over that runner (`rival`), and "auto" times it
beside onnxruntime fp32 and OpenVINO bf16 (its own bf16 kernels). On a 2-core AMX Xeon
OpenVINO bf16 ran S/16 at 1.4-2.2x and the small CIFAR-10 model at 2.5-3.5x PyTorch bf16, and
onnxruntime fp32 the digits model at 8x at batch 1. The graph runs, each batch on its faster
runtime, where that is faster in all (the product of its speed ratios to PyTorch at the batch
sizes timed); else the PyTorch runner stays. The timings go to a .speed-bf16.json beside the
graph.

OpenVINO compiles one precision per process: compiling f32 and bf16 models in one process
that also ran PyTorch bf16 crashed it on an AMX Xeon (a segmentation fault in OpenVINO's
generated code), so once a process has compiled one precision, "auto" leaves OpenVINO out
of the other.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import torch

from ..cache import default_cache_dir, model_fingerprint
from ..formats.openvino import available as openvino_available
from ..formats.openvino import may_compile as openvino_may_compile
from ..formats.openvino import version as openvino_version
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
                compile: bool | str = "auto", images: int | None = None, any_size: bool = False,
                rival: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.nn.Module | None:
    """The OnnxViT that runs `model` by onnxruntime when `engine` says so (module docstring),
    else None; `images`: how many images the caller will run (None: no end, as in serving);
    any_size: the graph takes any H and W the patch divides (inputs of sizes of their own);
    rival: with engine "auto", the PyTorch bf16 runner the graph's runtimes are timed against
    (None where it is not faster)."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "torch":
        return None
    if engine != "auto":
        rival = None
    problem = route_problem(model, "fp32" if rival is not None else precision, compile)
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
                return _runtime(path, model, engine, rival)
            except ValueError:
                path.unlink(missing_ok=True)  # a damaged cache file: export it again
        _export(model, path, any_size)
        return _runtime(path, model, engine, rival)
    except Exception as e:
        if engine != "auto":
            raise ValueError(f"engine {engine}: {first_line(e)}") from None
        warnings.warn(f"the ONNX route failed ({first_line(e)}); running eager PyTorch", VitkitWarning,
                      stacklevel=2)
        return None


SPEED_BATCHES = (1, 8)  # the batch sizes "auto" times each runtime at
SPEED_MAX_CALL = 1.5  # seconds: a model slower than this at batch 8 is timed at batch 1 alone
SPEED_ROUNDS, SPEED_ROUND_S = 3, 0.25  # rounds, and seconds of calls per runtime in each


def _runtime(path: Path, model: ViT, engine: str, rival: Callable | None = None) -> torch.nn.Module | None:
    """The graph on the runtime `engine` names; for "auto", the one measured faster (module
    docstring), or both, split by batch size; None where the `rival` runner is faster."""
    if engine != "auto":
        return _open(path, model, engine)
    runtimes: dict[str, Callable] = {"onnx": _open(path, model, "onnx")}
    ov_precision = "bf16" if rival is not None else "fp32"
    if openvino_available() and openvino_may_compile(ov_precision):
        try:
            runtimes["openvino"] = _open(path, model, "openvino", ov_precision)
        except ValueError as e:
            warnings.warn(f"{first_line(e)}; running onnxruntime", VitkitWarning, stacklevel=3)
    if rival is not None:
        runtimes["torch"] = rival
    elif len(runtimes) == 1:
        return runtimes["onnx"]
    seconds = _speeds(path, runtimes, model.config, "-bf16" if rival is not None else "")
    graphs = {b: min((n for n in s if n != "torch"), key=s.get) for b, s in seconds.items()}
    if rival is not None:
        ratios = [s["torch"] / s[graphs[b]] for b, s in seconds.items()]
        if math.prod(ratios) <= 1.0:
            return None  # PyTorch is faster in all
    for b in SPEED_BATCHES:  # a batch size not timed (a slow model) follows batch 1
        graphs.setdefault(b, graphs[SPEED_BATCHES[0]])
    small, large = (runtimes[graphs[b]] for b in SPEED_BATCHES)
    if small is large:
        return small
    from ..formats.openvino import ByBatch

    return ByBatch(small, large, SPEED_BATCHES[-1]).eval()


def _speeds(path: Path, runtimes: dict[str, Callable], config, tag: str = "") -> dict[int, dict[str, float]]:
    """{batch size: {runtime: seconds per image}} from the graph's .speed{tag}.json when it was
    measured on this machine for these runtimes, else measured now and written there."""
    import json

    from ..files import atomic_write_bytes

    record = path.with_name(f"{path.stem}.speed{tag}.json")
    machine = _machine()
    try:
        stored = json.loads(record.read_text())
        seconds = {int(b): dict(s) for b, s in stored["seconds_per_image"].items()}
        if stored.get("machine") == machine and all(set(s) == set(runtimes) for s in seconds.values()):
            return seconds
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        pass
    seconds = _time_runtimes(runtimes, config)
    faster = {b: min(s, key=s.get) for b, s in seconds.items()}
    text = json.dumps({"machine": machine, "seconds_per_image": {str(b): s for b, s in seconds.items()},
                       "faster": {str(b): name for b, name in faster.items()}}, indent=1)
    try:
        atomic_write_bytes(record, text.encode())
    except OSError:  # a read-only cache: measured again next time
        pass
    return seconds


def _machine() -> str:
    """What the timings hold for: the CPU, the threads and the runtimes' versions."""
    import onnxruntime

    from ..precision import cpu_name

    ov = f"; openvino {openvino_version()}" if openvino_available() else ""
    return (f"{cpu_name()}; {torch.get_num_threads()} threads; torch {torch.__version__}; "
            f"onnxruntime {onnxruntime.__version__}{ov}")


def _time_runtimes(runtimes: dict[str, Callable], config) -> dict[int, dict[str, float]]:
    """Seconds per image of each runtime at each of SPEED_BATCHES, on zero inputs (the speed
    of a graph does not depend on the pixels): after two warm-up calls, SPEED_ROUNDS rounds
    that alternate the runtimes, each running calls for about SPEED_ROUND_S; the best round's
    mean. Single calls of a few milliseconds scatter by more than the runtimes differ."""
    seconds: dict[int, dict[str, float]] = {}
    for batch in SPEED_BATCHES:
        x = torch.zeros(batch, config.num_channels, *config.image_hw)
        first = {name: _time_call(m, x) for name, m in runtimes.items()}  # warm-up, and the cost
        if batch > 1 and max(first.values()) > SPEED_MAX_CALL:
            break
        cost = {name: min(first[name], _time_call(m, x)) for name, m in runtimes.items()}
        calls = {name: max(1, round(SPEED_ROUND_S / max(c, 1e-6))) for name, c in cost.items()}
        best = {name: math.inf for name in runtimes}
        for _ in range(SPEED_ROUNDS):
            for name, m in runtimes.items():
                mean = sum(_time_call(m, x) for _ in range(calls[name])) / calls[name]
                best[name] = min(best[name], mean)
        seconds[batch] = {name: s / batch for name, s in best.items()}
    return seconds


def _time_call(module: Callable, x: torch.Tensor) -> float:
    start = time.perf_counter()
    module(x)
    return time.perf_counter() - start


def _open(path: Path, model: ViT, engine: str, precision: str = "fp32") -> torch.nn.Module:
    """The cached graph as an OnnxViT (or, for engine "openvino", an OpenVINOViT computing in
    `precision`) on torch's intra-op thread count (ValueError if unreadable)."""
    from ..formats.exported import open_onnx

    if engine == "onnx":
        return open_onnx(path, torch.get_num_threads()).model
    from ..formats.openvino import OpenVINOViT, compile_file

    threads, blobs = torch.get_num_threads(), path.parent / "openvino"
    try:
        compiled = compile_file(path, threads, blobs, precision)
    except Exception as e:  # OpenVINO's errors on a damaged file
        raise ValueError(f"{path}: OpenVINO cannot compile it ({first_line(e)})") from None
    return OpenVINOViT(compiled, model.config, {}, path, threads, blobs, precision).eval()


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
    print(f"vitkit: exported the graph once in {time.perf_counter() - start:.1f} s to {path} (inference "
          f"runs it by onnxruntime or OpenVINO where faster)", file=sys.stderr, flush=True)
