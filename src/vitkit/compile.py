"""torch.compile for inference and training, decided in one place.

- compile "auto": off. On a CPU inductor takes seconds to minutes per model and again per
  batch size, and gained at batch 1 only (docs/evaluate-predict.md has the figures): that
  costs every prediction, evaluation and short run more than it saves, so only long-lived
  serving or long runs gain: ask for it there. On GPUs it is unmeasured, so off there too;
- compile True: compile anyway (inductor, on any device); False: never.

compile_model compiles a model in place (nn.Module.compile): its state dict, its methods and
everything that holds it stay as they are; only calling it goes through the compiled
graph. compiled_call leaves the model alone and returns a compiled callable instead (what
vitkit.inference runs). Methods other than forward (forward_features with attention, used by
attention capture) run eagerly. The first call compiles; its time is printed once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Literal

import torch

CompileChoice = Literal["auto"] | bool


def compile_wanted(choice: CompileChoice | str, device: torch.device | str) -> bool:
    """Whether `choice` ("auto", True/False or their spellings) compiles on `device`."""
    if isinstance(choice, str):
        spelled = {"auto": "auto", "true": True, "false": False, "1": True, "0": False}
        choice = spelled.get(choice.lower(), choice)
    if choice == "auto":
        return False  # measured not to pay (module docstring)
    if not isinstance(choice, bool):
        raise ValueError(f"compile {choice!r}: expected auto, true or false")
    return choice


def compile_model(model: torch.nn.Module, choice: CompileChoice | str = "auto", *, backend: str = "inductor",
                  label: str = "model") -> bool:
    """Compile `model` in place when `choice` says so; returns whether it did. The first
    call (the compilation) is timed and reported on stderr."""
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if model._compiled_call_impl is not None:
        return True  # compiled already
    if not compile_wanted(choice, device):
        return False
    model.compile(backend=backend)
    compiled = model._compiled_call_impl

    def first_call(*args, **kwargs):
        start = time.perf_counter()
        out = compiled(*args, **kwargs)
        model._compiled_call_impl = compiled
        print(f"vitkit: compiled the {label} ({backend}) in {time.perf_counter() - start:.1f} s",
              file=sys.stderr, flush=True)
        return out

    model._compiled_call_impl = first_call
    return True


def compiled_call(model: torch.nn.Module, choice: CompileChoice | str = "auto", *, backend: str = "inductor",
                  label: str = "model") -> Callable | None:
    """torch.compile of `model` as a separate callable when `choice` says so, else None; the
    model object itself is not changed. The first call (the compilation) is timed on stderr."""
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if model._compiled_call_impl is not None:
        return model  # compiled in place already
    if not compile_wanted(choice, device):
        return None
    graph = torch.compile(model, backend=backend)
    timed = False

    def call(*args, **kwargs):
        nonlocal timed
        if timed:
            return graph(*args, **kwargs)
        start = time.perf_counter()
        out = graph(*args, **kwargs)
        timed = True
        print(f"vitkit: compiled the {label} ({backend}) in {time.perf_counter() - start:.1f} s",
              file=sys.stderr, flush=True)
        return out

    return call
