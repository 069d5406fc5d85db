"""Device and precision, decided in one place for training, evaluation and prediction.

- device "auto": CUDA when available, else the CPU;
- training precision "auto": bf16 autocast on GPUs with bf16; on CPUs with native bf16 for
  models of at least BF16_TRAINING_MIN_MACS forward MACs per image (lower with AMX); else fp32;
- inference precision "auto": bf16 wherever the hardware computes it natively (GPUs,
  CPUs with AVX512-BF16 or AMX), else fp32 (vitkit.inference runs a model at it).

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


# bf16 autocast pays in CPU training once a model's matrix products outweigh the casts and fp32
# norms it adds, and how soon depends on the CPU's bf16 units: the forward MACs per image
# (vitkit.info.forward_macs) from which it trained faster, with AMX and with AVX512-BF16 alone
# (benchmarks/train_precision.py; the figures are in docs/evaluate-predict.md).
BF16_TRAINING_MIN_MACS = {"amx": 12e6, "avx512": 8e9}


def training_precision(name: str, device: torch.device, macs: float | None = None) -> str:
    """"auto" for training: bf16 on GPUs that have it, and on CPUs with native bf16 for models
    of at least BF16_TRAINING_MIN_MACS forward MACs per image for the CPU's kind (`macs`;
    unknown: fp32); else fp32. bf16 asked for on a CPU that only emulates it becomes fp32,
    with a warning: emulated bf16 trains an order of magnitude slower than fp32."""
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
    """The autocast context of `precision` on `device`: bf16 autocast, or nothing for fp32.
    Training wraps its step in it; inference gets it from vitkit.inference's Runner."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_name() -> str:
    """The CPU as benchmark tables name it: model name, family and model numbers (a bare
    "AMD EPYC" says little), core count, and whether it has native bf16 and AMX."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    except OSError:
        return f"{platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"
    info = {k.strip(): v.strip() for k, v in info.items()}
    bf16 = "native bf16" if native_bf16("cpu") else "no native bf16"
    bf16 += ", AMX" if cpu_has_amx() else ", no AMX"
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model "
            f"{info.get('model', '?')}, {os.cpu_count()} cores, {bf16})")
