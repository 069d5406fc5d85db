"""What every checkpoint format shares: reading files without unpickling, and the Source a
format reader returns (vitkit-named tensors plus what the files state about the model).

Convention for keys a reader does not know: it appends them to ``Source.unknown``; the
loader refuses them in strict mode and lists them in the report otherwise. Parts that would
change the architecture (layer scale, register tokens, ...) are refused by the reader itself.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..config import ViTConfig

# What a weights argument may be, for the line that refuses anything else.
READABLE = ("a vitkit, Hugging Face or timm model folder, a .safetensors file, a PyTorch .pth / .pt / .bin "
            "file, an official .npz file, an exported .onnx file, or a Hub id")

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class Source:
    """A checkpoint read and renamed to vitkit keys, before any model is built."""

    format: str
    sd: dict[str, torch.Tensor]
    detail: str = ""
    config: ViTConfig | None = None  # known exactly (vitkit's own files)
    known: dict = field(default_factory=dict)  # config fields the file states (HF config.json, npz heads)
    unknown: list[str] = field(default_factory=list)  # keys with no vitkit name
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


# ---- reading files -------------------------------------------------------------------------
def torch_load(path: str | Path) -> Any:
    """torch.load that unpickles nothing but tensors and plain containers."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported operand" in str(e):  # an opcode no pickle has: a damaged file, not code
            raise ValueError(f"{path}: not a readable PyTorch file (damaged: {str(e).splitlines()[0]})"
                             ) from None
        why = next((ln.strip() for ln in str(e).splitlines() if "nsupported" in ln), "not plain tensors")
        raise ValueError(f"{path}: refused: loading it would unpickle arbitrary Python objects ({why})"
                         ) from None
    except Exception as e:  # a damaged file fails anywhere in the unpickler (KeyError, IndexError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {first})") from None


def unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a torch file: bare, or under 'state_dict' / 'model' as training
    checkpoints store it; a DistributedDataParallel 'module.' prefix is removed."""
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "module", "state_dict_ema", "model_ema"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: holds {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:6]))}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def sniff(path: Path) -> str:
    """'npz', 'safetensors' or 'torch' for a file, by suffix and content; anything else (an
    image, a text file) is refused in one line naming what vitkit reads."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".safetensors":
        return "safetensors"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return "npz" if any(n.endswith(".npy") for n in z.namelist()) else "torch"
        with open(path, "rb") as f:
            head = f.read(9)
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror if isinstance(e, OSError) else e})") from None
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":  # a pickle (torch.save's format before zip files)
        return "torch"
    raise ValueError(f"{path}: not a checkpoint vitkit reads (expected {READABLE})")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or PyTorch file, read safely."""
    path = Path(path)
    if sniff(path) == "safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    return unwrap(torch_load(path), path)


