"""Turning any image into the tensor a model was trained on.

What a model expects is stored with it (config.json, key "data"): image size, channel count,
and the normalization mean and std. The same function serves training-time decoding of
image folders and prediction, so both prepare images identically. Every image is opened
through open_image, which turns it upright by its EXIF orientation: cameras store the pixels
as the sensor read them and record the turn, so a phone photo read raw lies on its side.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import BinaryIO, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

from ..sizes import hw

RESIZE_MODES = ("squash", "crop", "keep")
MAX_ASPECT = 2.0  # keep: images longer than 2:1 are fed at 2:1 (bounds the batch canvas)


def keep_size(own: tuple[int, int], size: int | tuple[int, int], patch: int) -> tuple[int, int]:
    """The size an image of `own` (h, w) is fed at when its aspect ratio is kept (resize "keep",
    as NaFlex does): a grid of patch x patch patches with no more patches than `size` holds,
    whose aspect ratio is nearest the image's (clamped to MAX_ASPECT), the most patches among
    equals. A square image gets `size` itself when that is square. Each side is a multiple of
    the patch by construction: this is the rule for sizes the patch does not divide."""
    oh, ow = hw(own)
    h, w = hw(size)
    budget = max(1, (h // patch) * (w // patch))
    aspect = math.log(min(max(oh / max(ow, 1), 1 / MAX_ASPECT), MAX_ASPECT))
    gh, gw = min(((g, budget // g) for g in range(1, budget + 1)),
                 key=lambda c: (abs(math.log(c[0] / c[1]) - aspect), -c[0] * c[1]))
    return gh * patch, gw * patch


class Fit(NamedTuple):
    """A size to decode at with a resize other than "squash" (InputSpec.resize): passed where a
    plain (h, w) size goes, so decoders and their cache keys tell it apart."""

    h: int
    w: int
    resize: str
    patch: int = 1


def fit(size: tuple[int, int] | None, resize: str = "squash", patch: int = 1) -> tuple[int, int] | Fit | None:
    """What decoders take for `size` under `resize`: the plain size for "squash"."""
    return size if size is None or resize == "squash" else Fit(size[0], size[1], resize, patch)


@dataclass
class InputSpec:
    """How raw images become model inputs."""

    image_size: tuple[int, int] = (224, 224)
    channels: int = 3  # 1: grayscale, 3: RGB
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    crop_pct: float = 1.0  # < 1: resize the shorter side to size / crop_pct, then centre-crop
    # squash: the whole image to image_size; crop: scaled to cover it, then the centre crop;
    # keep: the image's aspect ratio, at most image_size's patches of `patch` px (keep_size)
    resize: Literal["squash", "crop", "keep"] = "squash"
    patch: int = 1  # keep: each side is a multiple of it (the model's patch size)

    def __post_init__(self) -> None:
        self.image_size = hw(self.image_size)
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize {self.resize!r}: expected one of {', '.join(RESIZE_MODES)}")

    @property
    def any_size(self) -> bool:
        """Whether images reach the model at sizes of their own (resize "keep")."""
        return self.resize == "keep"

    @property
    def batch_size_hw(self) -> tuple[int, int] | None:
        """The size every batch is brought to; None when images keep sizes of their own."""
        return None if self.any_size else self.image_size

    @property
    def fit(self) -> tuple[int, int] | Fit:
        """The size decoders take for this spec (preprocess.fit)."""
        return fit(self.image_size, self.resize, self.patch)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(image_size=tuple(d["image_size"]), channels=int(d["channels"]),
                   mean=list(d["mean"]), std=list(d["std"]),
                   interpolation=d.get("interpolation", "bicubic"), crop_pct=float(d.get("crop_pct", 1.0)),
                   resize=d.get("resize", "squash"), patch=int(d.get("patch", 1)))

    @classmethod
    def for_model(cls, image_size: tuple[int, int], channels: int, stored: dict | None = None,
                  patch: int = 1, **given) -> tuple[InputSpec, list[str]]:
        """The spec to feed a model: what was given, else what its files stored, else the
        model's own size and channels with mean = std = 0.5 (inputs in [-1, 1], as the
        paper's models were trained). Returns the spec and a note on each default used."""
        stored = {k: v for k, v in (stored or {}).items() if v is not None}
        given = {k: v for k, v in given.items() if v is not None}
        d = {**stored, **given}
        notes = []
        c = int(d.get("channels", channels))
        if "mean" not in d or "std" not in d:
            notes.append("normalization not recorded: mean = std = 0.5 assumed (pass --load.mean / "
                         "--load.std if the model was trained otherwise)")
        mean, std = list(d.get("mean", [0.5] * c)), list(d.get("std", [0.5] * c))
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean {mean} / std {std} do not have one value per channel ({c})")
        size = d.get("image_size", image_size)
        return cls(hw(size), c, [float(v) for v in mean], [float(v) for v in std],
                   d.get("interpolation", "bicubic"), float(d.get("crop_pct", 1.0)),
                   d.get("resize", "squash"), int(d.get("patch", patch))), notes


EXIF_ORIENTATION = 0x0112
# Part of the key of every cache of decoded images or what is computed from them: such caches
# written before images were turned upright hold the raw pixels and must not be read.
DECODING = "exif1"
_QUARTER_TURNS = {5, 6, 7, 8}  # orientations whose upright width is the stored height


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when it has none or it cannot be read
    (malformed metadata is no reason to refuse the pixels)."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) an opened image will have once upright, read from its header without
    decoding pixels (a PNG's EXIF block after its pixels is passed over rather than decoded for)."""
    if img.format == "PNG" and "exif" not in img.info:  # PIL would decode the pixels to look
        return img.size
    w, h = img.size
    tags = getattr(img, "tag_v2", None)  # a TIFF: PIL may report its size upright already
    if tags is not None and 256 in tags and 257 in tags:
        w, h = int(tags[256]), int(tags[257])  # ImageWidth, ImageLength: as stored
    return (h, w) if exif_orientation(img) in _QUARTER_TURNS else (w, h)


def upright(img: Image.Image) -> Image.Image:
    """img decoded and turned as its EXIF orientation says: img itself when it needs no turn
    (the common case costs one tag lookup), else a new image with the same format and info
    and the orientation tag removed, so it is never applied twice."""
    img.load()
    if exif_orientation(img) == 1:  # also TIFFs, which PIL turns on loading
        return img
    turned = ImageOps.exif_transpose(img)
    if turned is None:  # not in place: PIL always returns an image
        return img
    turned.format = img.format
    return turned


def open_image(source: str | os.PathLike | BinaryIO, formats: tuple[str, ...] | None = None) -> Image.Image:
    """Open a path or binary stream as a decoded, upright image: how vitkit reads every image
    for a model, so that training, prediction, features and serving see the same pixels.

    PIL's checks are unchanged: Image.MAX_IMAGE_PIXELS is enforced on opening
    (DecompressionBombError) and every decoding error propagates as PIL raises it. A file PIL
    opened is closed on return; the image stays usable (the first frame of an animation) and
    may be used in a with block like Image.open's.
    """
    with Image.open(source, formats=formats) as img:
        return upright(img)


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


_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def image_to_uint8(img: Image.Image, channels: int, size: tuple[int, int] | Fit | None,
                   interpolation: str = "bicubic", crop_pct: float = 1.0, resize: str = "squash",
                   patch: int = 1) -> torch.Tensor:
    """(C, H, W) uint8 tensor, resized (antialiased) when size is given, by `resize` (see
    InputSpec): the whole image to size ("squash"), scaled to cover size and centre-cropped
    ("crop", and whenever crop_pct < 1: the shorter side to size / crop_pct, as timm's eval
    transform), or to keep_size ("keep"). A Fit as size brings its own resize."""
    if isinstance(size, Fit):
        size, resize, patch = (size.h, size.w), size.resize, size.patch
    img = to_mode(img, channels)
    resample = _RESAMPLE[interpolation]
    if size is not None and resize == "keep":
        size = keep_size((img.size[1], img.size[0]), size, patch)
    if size is not None and (crop_pct < 1.0 or resize == "crop"):
        h, w = size
        iw, ih = img.size
        if h == w:  # Resize(int) then CenterCrop
            short = math.floor(h / crop_pct)
            nw, nh = (short, int(short * ih / iw)) if iw <= ih else (int(short * iw / ih), short)
        else:
            scale = max(h / ih, w / iw) / crop_pct
            nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
        img = img.resize((nw, nh), resample)
        left, top = int(round((nw - w) / 2.0)), int(round((nh - h) / 2.0))
        img = img.crop((left, top, left + w, top + h))
    elif size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), resample)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def normalize(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 (..., C, H, W) -> float, scaled to [0, 1] then normalized by mean and std."""
    mean = torch.tensor(spec.mean, device=x.device).view(-1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(-1, 1, 1)
    return (x.float() / 255.0 - mean) / std


def spec_uint8(img: Image.Image, spec: InputSpec) -> torch.Tensor:
    """A PIL image of any size and mode -> the (C, H, W) uint8 pixels the model sees."""
    return image_to_uint8(img, spec.channels, spec.image_size, spec.interpolation, spec.crop_pct,
                          spec.resize, spec.patch)


def prepare_image(img: Image.Image, spec: InputSpec) -> torch.Tensor:
    """A PIL image of any size and mode -> the normalized (C, H, W) float tensor."""
    return normalize(spec_uint8(img, spec), spec)
