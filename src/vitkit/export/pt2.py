"""torch.export archives (.pt2): the traced graph and its weights, loadable with
torch.export.load alone, without vitkit's model code.

The vitkit metadata is stored as the extra file `vitkit.json` inside the archive.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..files import atomic_write_bytes
from ..formats.exported import METADATA_KEY, parse
from ..model import ViT
from .onnx import batch_dim
from .prepare import dumps

EXTRA_FILE = f"{METADATA_KEY}.json"


def export_pt2(model: ViT, meta: dict, out: Path) -> Path:
    """Trace the eager fp32 model (eval mode) with a dynamic batch axis and save it."""
    x = torch.zeros(2, model.config.num_channels, *model.config.image_hw)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch_dim()},))
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={EXTRA_FILE: dumps(meta)})
    return atomic_write_bytes(out, buf.getvalue())


def load_pt2(path: str | Path):
    """(ExportedProgram, metadata dict, ViTConfig, InputSpec) of a vitkit .pt2 file."""
    extra = {EXTRA_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as e:  # torch raises assorted errors for files that are not archives
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: not a readable torch.export archive ({first})") from None
    if not extra[EXTRA_FILE]:
        raise ValueError(f"{path}: no vitkit metadata ({EXTRA_FILE}) in the archive")
    meta, config, spec = parse(extra[EXTRA_FILE], str(path))
    return program, meta, config, spec
