"""Turning any image into the tensor a model was trained on.

What a model expects is stored with it (config.json, key "data"): image size, channel count,
and the normalization mean and std. The same function serves training-time decoding of
image folders and prediction, so both prepare images identically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image


@dataclass
class InputSpec:
    """How raw images become model inputs."""

    image_size: tuple[int, int] = (224, 224)
    channels: int = 3  # 1: grayscale, 3: RGB
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(image_size=tuple(d["image_size"]), channels=int(d["channels"]),
                   mean=list(d["mean"]), std=list(d["std"]))


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode (palette, RGBA, 16-bit, CMYK, ...) to "L" or "RGB".

    Transparent pixels are composited onto black; 16- and 32-bit grayscale is scaled
    down to 8 bits by its actual range rather than clipped.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max()
        arr = arr / hi * 255.0 if hi > 255 else arr
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        base = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(base, img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


def image_to_uint8(img: Image.Image, channels: int, size: tuple[int, int] | None) -> torch.Tensor:
    """(C, H, W) uint8 tensor, resized (bicubic, antialiased) when size is given."""
    img = to_mode(img, channels)
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def normalize(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 (..., C, H, W) -> float, scaled to [0, 1] then normalized by mean and std."""
    mean = torch.tensor(spec.mean, device=x.device).view(-1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(-1, 1, 1)
    return (x.float() / 255.0 - mean) / std


def prepare_image(img: Image.Image, spec: InputSpec) -> torch.Tensor:
    """A PIL image of any size and mode -> the normalized (C, H, W) float tensor."""
    return normalize(image_to_uint8(img, spec.channels, spec.image_size), spec)
