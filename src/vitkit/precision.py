"""Device and precision, decided in one place for training, evaluation and prediction.

- device "auto": CUDA when available, else the CPU;
- training precision "auto": bf16 autocast on GPUs with bf16; on CPUs with native bf16 for
  models of at least BF16_TRAINING_MIN_MACS forward MACs per image (lower with AMX); else fp32;
- inference precision "auto": bf16 wherever the hardware computes it natively (GPUs,
  CPUs with AVX512-BF16 or AMX), else fp32 (vitkit.inference prepares a model for it).

Decisions only: nothing here prepares or runs a model, so every layer above may ask
(docs/architecture.md).

The environment variable VITKIT_NATIVE_BF16=0 (or 1) overrides what the CPU reports, so one
machine can run everything as a CPU without (or with) native bf16 would; `make test` runs
the precision-sensitive tests both ways.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch

from .notices import VitkitWarning


def pick_device(name: str) -> torch.device:
    """"auto" is the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--run.device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


# bf16 autocast pays in CPU training once the matrix products outweigh what it adds (casts,
# fp32 norms, per-op overhead); where that happens depends on the CPU's bf16 units, so the rule
# is in forward MACs per image (vitkit.info.forward_macs), step times interleaved in one process:
# - AVX512-BF16 without AMX (2-core Zen 5 EPYC, family 26): bf16 ran 0.55x fp32 on the digits
#   recipe (3.1 MMACs), 0.66x on the CIFAR-10 recipe (137 MMACs), 0.98x on S/16 (4.6 GMACs) and
#   1.12x on B/16 (17.6 GMACs): bf16 from 8 GMACs;
# - AMX (2-core Intel Xeon, family 6 model 167; benchmarks/train_precision.py): 0.98x on the
#   digits recipe (3.1 MMACs), 1.04x on the default photo model (64x64 RGB, patch 8; 11.5
#   MMACs, and its whole 60-epoch run 1.08x, 2 points lower on 150 test images), 1.78x on the
#   default model of a 28x28 folder (16.9 MMACs), 2.12x on the CIFAR-10 recipe, 2.58x on S/16
#   and 2.84x on B/16: bf16 from 12 MMACs. (The conv stems gain most: the default model of a
#   16x16 folder, 5.3 MMACs, ran 1.40x, and stays in fp32 under this rule.)
BF16_TRAINING_MIN_MACS = {"amx": 12e6, "avx512": 8e9}


def training_precision(name: str, device: torch.device, macs: float | None = None) -> str:
    """"auto" for training: bf16 on GPUs that have it, and on CPUs with native bf16 for models
    of at least BF16_TRAINING_MIN_MACS forward MACs per image for the CPU's kind (`macs`;
    unknown: fp32); else fp32. bf16 asked for on a CPU that only emulates it becomes fp32,
    with a warning: emulated bf16 trains the CIFAR-10 recipe 14x slower than fp32 (7 against
    100 img/s on a 2-core Zen 3 EPYC)."""
    if name == "bf16" and device.type == "cpu" and not native_bf16(device):
        warnings.warn("precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX) and would emulate "
                      "it, about 10x slower than fp32; training in fp32", VitkitWarning, stacklevel=2)
        return "fp32"
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if macs is None or not native_bf16(device):
        return "fp32"
    return "bf16" if macs >= BF16_TRAINING_MIN_MACS["amx" if cpu_has_amx() else "avx512"] else "fp32"


NATIVE_BF16_ENV = "VITKIT_NATIVE_BF16"


def native_bf16(device: torch.device | str) -> bool:
    """Whether the hardware computes bf16 natively (AVX512-BF16 / AMX on CPUs); on CPUs,
    VITKIT_NATIVE_BF16=0/1 overrides the answer."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"{NATIVE_BF16_ENV}={forced!r}: expected 0 or 1")
    return cpu_has_native_bf16()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (read once from /proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """What the CPU itself reports: AVX512-BF16 or AMX-BF16 among its flags."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_has_amx() -> bool:
    """AMX-BF16: bf16 matrix tiles (Intel Sapphire Rapids and later), beyond AVX512-BF16's
    vector dot products."""
    return "amx_bf16" in cpu_flags()


def inference_precision(name: str, device: torch.device | str) -> str:
    """"auto" is bf16 autocast where the hardware has native bf16, else fp32."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {name!r}: expected auto, fp32 or bf16")
    return name


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def weights_autocast(model: torch.nn.Module):
    """Autocast matching how `model`'s weights are stored: a model that for_inference put in
    bf16 takes fp32 inputs under bf16 autocast, one with fp32 weights runs as it is."""
    p = next((p for p in model.parameters() if p.dtype == torch.bfloat16), None)
    return torch.autocast(p.device.type, dtype=torch.bfloat16) if p is not None else contextlib.nullcontext()
