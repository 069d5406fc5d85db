"""An ONNX file compiled by OpenVINO behind vitkit's model interface.

OpenVINO (the runtime optimum-intel uses) compiles the same ONNX graph onnxruntime runs; on
some CPUs it runs it faster in fp32 (benchmarks/export_speed.py; the figures are in
benchmarks/README.md). vitkit.export.route runs it when asked for (engine "openvino"). It is
an optional extra: pip install 'vitkit[openvino]'.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from pathlib import Path

import numpy as np

from ..config import ViTConfig
from .exported import OnnxViT


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    import openvino

    return openvino.__version__


PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # vitkit's names: OpenVINO's inference precision hints
_compiled: set[str] = set()  # the precisions compiled in this process


def may_compile(precision: str) -> bool:
    """Whether compiling `precision` keeps this process to one OpenVINO precision: compiling
    f32 and bf16 models in one process that also ran PyTorch bf16 crashed it on an AMX Xeon
    (a segmentation fault in OpenVINO's generated code)."""
    return not (_compiled - {precision})


def compile_file(path: str | Path, threads: int | None = None, cache_dir: str | Path | None = None,
                 precision: str = "fp32"):
    """The file compiled for the CPU in `precision` ("fp32", or "bf16" where the CPU computes
    it) for latency (one request, every thread it is given); compiled blobs are kept in
    `cache_dir`, so a second compile reads them."""
    import openvino as ov

    core = ov.Core()
    if cache_dir is not None:
        core.set_property({"CACHE_DIR": str(cache_dir)})
    config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    with kept_signal_stack():
        compiled = core.compile_model(str(path), "CPU", config)
    _compiled.add(precision)
    return compiled


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def kept_signal_stack():
    """Give the calling thread back the alternate signal stack it had before OpenVINO's CPU
    plugin set one of its own. The plugin sets its stack when it compiles and puts back the one
    it found when the compiled model goes; once compiled models go in another order than they
    came, the thread is left on a freed stack, and the next signal handled on the alternate
    stack (Python's SIGINT handler, so Ctrl-C in a training run) crashes the process. Kept,
    every compiled model finds and puts back Python's own stack. A no-op where libc has no
    sigaltstack."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        old = _SignalStack()
        if libc.sigaltstack(None, ctypes.byref(old)) != 0:
            raise OSError
    except (OSError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(old), None)


class OpenVINOViT(OnnxViT):
    """An ONNX classifier file compiled by OpenVINO, as a torch module without parameters."""

    engine = "openvino"

    def __init__(self, compiled, config: ViTConfig, meta: dict, path: Path, threads: int | None = None,
                 cache_dir: str | Path | None = None, precision: str = "fp32"):
        super().__init__(compiled, config, meta, path)  # session: the compiled model
        self.threads, self.cache_dir, self.asked = threads, cache_dir, precision
        # what it computes in: OpenVINO keeps f32 where the CPU has no bf16
        used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = "bf16" if used == "bf16" else "fp32"
        self._requests = threading.local()  # one infer request per calling thread

    def _input_name(self) -> str:
        return self.session.inputs[0].get_any_name()

    def _infer(self, arr: np.ndarray) -> list[np.ndarray]:
        # each thread its own request, made once: concurrent callers (serving threads) never
        # share one, and a stream of calls does not build a request each time
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self.session.create_infer_request()
        result = request.infer({0: arr}, share_inputs=True)
        return [np.array(result[out]) for out in self.session.outputs]

    def __deepcopy__(self, memo: dict) -> OpenVINOViT:
        """A copy with its own compiled model (read from the cache when there is one)."""
        compiled = compile_file(self.path, self.threads, self.cache_dir, self.asked)
        copied = type(self)(compiled, self.config, dict(self.meta), self.path, self.threads, self.cache_dir,
                            self.asked)
        return copied.train(self.training)

    def extra_repr(self) -> str:
        return super().extra_repr().replace("onnxruntime fp32", f"openvino {self.precision}")


class ByBatch(OnnxViT):
    """Two runtimes of one graph, each batch run by the one measured faster at its size:
    batches under `large_from` images by `small`, the others by `large`."""

    def __init__(self, small: OnnxViT, large: OnnxViT, large_from: int):
        super().__init__(small.session, small.config, small.meta, small.path)
        self.small, self.large, self.large_from = small, large, large_from
        self.engine = f"{small.engine} (batches under {large_from}), {large.engine} (the others)"
        self.precision = (small.precision if small.precision == large.precision else
                          f"{small.precision} (batches under {large_from}), {large.precision} (the others)")

    def _input_name(self) -> str:
        return ""  # each part feeds its own input

    def _infer(self, arr: np.ndarray) -> list[np.ndarray]:
        return (self.large if len(arr) >= self.large_from else self.small)._infer(arr)

    def __deepcopy__(self, memo: dict) -> ByBatch:
        import copy

        twin = type(self)(copy.deepcopy(self.small), copy.deepcopy(self.large), self.large_from)
        return twin.train(self.training)
