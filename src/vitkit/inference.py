"""Inference, set up in one place: prediction, evaluation, features, embeddings, probes,
serving, figures and the benchmarks run a model through the Runner that `prepare` returns.

vitkit.precision decides; this module acts on the decision, and is the one place that wraps
a forward pass in autocast for inference. It stands above vitkit.export because in fp32 on a
CPU the runner may run the model's ONNX graph by onnxruntime (vitkit.export.route).

What `prepare` does to the model it is given:

- its weights: nothing. In bf16 the runner runs a copy whose linear and convolution weights
  are stored in bf16, so autocast does not cast them again on every forward (norms,
  embeddings and the residual stream stay fp32: the results are those of fp32 weights under
  autocast). A model whose weights `for_inference` stored in bf16 already runs as it is;
- its mode: nothing lasting. A model in training mode is put in eval mode for each call and
  given its modes back after it;
- compiling: torch.compile of what the runner runs, as a callable of the runner's own; the
  model is not compiled in place;
- the ONNX route exports an fp32 copy of the model once into the cache.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .compile import compile_model, compiled_call
from .export.route import onnx_engine
from .precision import autocast, inference_precision


class Runner:
    """A model prepared for inference. Calling it on a normalized batch gives the logits at its
    precision, without gradients; `apply` runs another function of the module (features,
    attention maps) the same way.

    engine: "torch" (a PyTorch module), "onnx" (an ONNX graph run by onnxruntime) or
    "openvino" (the graph compiled by OpenVINO);
    precision: "fp32", "bf16", or "int8" for an int8 ONNX file; model: the model given to
    `prepare`; module: what runs (that model, its bf16 copy, or the ONNX graph); flip: answer
    with the mean of the logits of each image and its mirror image (test-time augmentation:
    twice the work, about a point on CIFAR-10 for a model trained with flips)."""

    flip = False

    def __init__(self, module: torch.nn.Module, model: torch.nn.Module, device: torch.device,
                 precision: str, engine: str, call: Callable | None = None, owned: bool = False):
        self.module = module
        self.model = model
        self.device = device
        self.precision = precision
        self.engine = engine
        self._call = call or module
        self._owned = owned  # the module is the runner's own copy, in eval mode for good

    def __repr__(self) -> str:
        return f"Runner({type(self.module).__name__}, engine={self.engine}, precision={self.precision})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a normalized batch (moved to the runner's device)."""
        if self.flip:
            return (self._logits(x) + self._logits(x.flip(-1))) / 2
        return self._logits(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.engine != "torch":  # a runtime's graph: its precision and mode are its own
            return self._call(x)
        return self.apply(lambda _, batch: self._call(batch), x.to(self.device, non_blocking=True))

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities: the module's own predict_proba where it runs eagerly (the
        softmax of its logits in fp32), else that softmax of the compiled call's logits."""
        if self._call is self.module and hasattr(self.module, "predict_proba") and not self.flip:
            return self.apply(lambda module, batch: module.predict_proba(batch), x.to(self.device))
        return self(x).float().softmax(dim=-1)

    def apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(module, *args, **kwargs) in eval mode at the runner's precision, without gradients."""
        with torch.no_grad(), self._eval_mode(), autocast(self.device, self.precision):
            return fn(self.module, *args, **kwargs)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        if self._owned or not self.module.training:
            yield
            return
        modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        try:
            yield
        finally:
            for m, mode in modes:
                m.training = mode


def prepare(model: torch.nn.Module, device: torch.device | str | None = None, precision: str = "auto",
            engine: str = "auto", images: int | None = None, compile: bool | str = "auto",
            bf16_weights: bool = True, any_size: bool = False, flip: bool = False) -> Runner:
    """The Runner for `model` on `device` (default: where its weights are), which stays there.

    precision: "auto" (bf16 where the hardware computes it natively, else fp32; vitkit.precision),
    "fp32" or "bf16". engine: vitkit.export.route's choice: "auto" or "onnx" may run the
    model's ONNX graph in fp32 on a CPU by onnxruntime, "openvino" by OpenVINO, "torch" never;
    where "auto" precision is bf16 on a CPU, "auto" runs the graph (onnxruntime fp32, OpenVINO
    bf16) only where it measured faster than PyTorch bf16 on this machine;
    `images` is the work to come (None: no end, as in serving). compile: vitkit.compile's
    choice. bf16_weights=False runs the model's own weights under autocast in bf16 (no copy:
    what evaluation during training does); the results are the same. any_size: inputs come at
    sizes of their own (InputSpec.any_size), so an ONNX graph of the route takes any H and W.
    An opened ONNX file runs as it is, in fp32 (or int8). flip: Runner.flip.
    What this does to `model` is in the module docstring: nothing that lasts.
    """
    device = torch.device(device) if device is not None else _device_of(model)
    if _is_graph(model):
        runner = Runner(model, model, device, model.precision, model.engine)
    else:
        asked, decided = precision, inference_precision(precision, device)
        runner = _runner(model, device, asked, decided, engine, images, compile, bf16_weights, any_size)
    runner.flip = flip
    return runner


def _runner(model: torch.nn.Module, device: torch.device, asked: str, precision: str, engine: str,
            images: int | None, compile: bool | str, bf16_weights: bool, any_size: bool) -> Runner:
    """prepare's Runner for a PyTorch model at the `precision` decided for the `asked` one."""
    # native bf16 chosen by "auto" on a CPU: the graph's runtimes are timed against PyTorch bf16
    rivalled = precision == "bf16" and asked == "auto" and engine == "auto" and device.type == "cpu"
    if not rivalled:
        routed = onnx_engine(model, precision, engine, compile, images, any_size)
        if routed is not None:
            return Runner(routed, model, device, routed.precision, routed.engine, owned=True)
    module, owned = model, False
    if precision == "bf16" and bf16_weights and not _stored_bf16(model):
        module, owned = _bf16_copy(model), True
    call = compiled_call(module, compile, label="model for inference")
    runner = Runner(module, model, device, precision, "torch", call, owned)
    if rivalled:
        routed = onnx_engine(model, precision, engine, compile, images, any_size, rival=runner)
        if routed is not None:
            return Runner(routed, model, device, routed.precision, routed.engine, owned=True)
    return runner


def as_runner(model: torch.nn.Module | Runner, device: torch.device | str | None = None,
              precision: str | None = None) -> Runner:
    """A Runner as it is; a module (a model being trained, one given to a figure) run with its
    own weights at `precision`, nothing prepared or copied. precision None: as the weights are
    stored (bf16 for weights `for_inference` stored in bf16, else fp32)."""
    if isinstance(model, Runner):
        return model
    if precision is None:
        precision = "bf16" if _stored_bf16(model) else "fp32"
    return prepare(model, device, precision, engine="torch", compile=False, bf16_weights=False)


def for_inference(model: torch.nn.Module, precision: str, compile: bool | str = "auto",
                  engine: str = "torch", images: int | None = None) -> torch.nn.Module:
    """The in-place preparation, for code that runs the module itself at a precision decided
    already: eval mode; for bf16 the linear and convolution weights stored in bf16 on `model`
    itself; compiled in place when `compile` says so; with engine "auto" or "onnx", the ONNX
    graph instead (a different object) where vitkit.export.route runs it. Calling it again
    changes nothing. `prepare` does the same without changing the model."""
    model.eval()
    routed = onnx_engine(model, precision, engine, compile, images)
    if routed is not None:
        return routed
    if precision == "bf16":
        _cast_weights(model)
    compile_model(model, compile, label="model for inference")
    return model


def by_size(fn: Callable[[list[int]], list], items: list[torch.Tensor]) -> list:
    """fn(indices) for each group of items of one shape (images read at sizes of their own,
    resize "keep", are batched one size at a time); its per-item results back in item order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(items):
        groups.setdefault(tuple(t.shape), []).append(i)
    out: list = [None] * len(items)
    for idx in groups.values():
        for i, r in zip(idx, fn(idx), strict=True):
            out[i] = r
    return out


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _is_graph(model: torch.nn.Module) -> bool:
    """An exported ONNX file opened by vitkit.formats.exported (a runtime's session)."""
    return hasattr(model, "session") and next(model.parameters(), None) is None


def _weighted(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The modules whose weights bf16 inference stores in bf16: linear layers and convolutions."""
    return (m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))


def _stored_bf16(model: torch.nn.Module) -> bool:
    return any(m.weight.dtype == torch.bfloat16 for m in _weighted(model))


def _cast_weights(model: torch.nn.Module) -> None:
    for m in _weighted(model):
        m.to(torch.bfloat16)


def _bf16_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of `model` with bf16 linear and convolution weights, made without an
    fp32 copy of them in between."""
    memo: dict[int, Any] = {}
    for m in _weighted(model):
        for p in m.parameters(recurse=False):
            memo[id(p)] = torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)
    twin = copy.deepcopy(model, memo)
    twin._compiled_call_impl = None  # a model compiled in place would call the original's graph
    return twin.eval()
