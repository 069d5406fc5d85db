"""vitkit's own checkpoint format, and atomic file writes.

A model directory holds ``config.json`` (the ViTConfig under "model", plus what is needed to
prepare inputs: class names, image size, channels, normalization) and ``model.safetensors``
(the weights alone). Every file is written atomically: to a temporary file in the same
directory, flushed and fsynced, then renamed over the target, so a crash leaves either the
old file or the new one, never a torn one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from .config import ViTConfig
from .model import ViT

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a file through write(f) so that it appears whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """torch.save through a temporary file; the result loads with weights_only=True."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_weights(path: str | Path, model: torch.nn.Module) -> Path:
    """Weights alone as safetensors (contiguous, detached, on the CPU)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write_bytes(path, save(sd, metadata={"format": "pt"}))


def save_pretrained(model: ViT, directory: str | Path, extra: dict | None = None) -> Path:
    """Write config.json and model.safetensors; `extra` (classes, preprocessing) joins the
    config so that a loader can prepare inputs the way the model was trained."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(directory / WEIGHTS_NAME, model)
    atomic_write_json(directory / CONFIG_NAME, {"model": model.config.to_dict(), **(extra or {})})
    return directory


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a vitkit model directory)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if "model" not in meta:
        raise ValueError(f"{path}: no 'model' section; not a vitkit config")
    return meta


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[ViT, dict]:
    """Load a directory written by save_pretrained: the model and its config.json contents."""
    directory = Path(directory)
    meta = read_config(directory)
    model = ViT(ViTConfig.from_dict(meta["model"]))
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such file")
    sd = load_file(str(weights), device=str(map_location))
    load_state_dict_checked(model, sd, source=str(weights))
    return model, meta


def load_state_dict_checked(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with one clear error naming missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else ""))
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:5]))
    if problems:
        raise ValueError(f"{source}: weights do not fit the model: " + " | ".join(problems))
    model.load_state_dict(sd)
