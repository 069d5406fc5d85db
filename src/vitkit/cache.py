"""The caches vitkit keeps for the user (decoded images, features, ONNX graphs): where they
live, and the fingerprint of a model's weights that keys what is computed from them, so that a
changed weight is a new key and nothing stale is ever read back."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

CACHE_ENV = "VITKIT_CACHE_DIR"


def default_cache_dir() -> Path:
    """$VITKIT_CACHE_DIR, else $XDG_CACHE_HOME/vitkit, else ~/.cache/vitkit."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitkit"


def model_fingerprint(model: torch.nn.Module, *extra) -> str:
    """The weights (every tensor's name, dtype, shape and bytes), the config and `extra`
    (JSON-able: an input spec's dict, an export's options) as one hex digest."""
    h = hashlib.sha256()
    h.update(json.dumps([model.config.to_dict(), *extra], sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
