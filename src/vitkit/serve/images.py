"""Uploaded bytes -> a decoded PIL image, or an UploadError with the HTTP status to answer.

Uploads come from anywhere, so decoding is defensive: only common raster formats are
opened (PIL plugins such as EPS would start external programs), the pixel count is checked
from the header before any pixel is decoded (a 60000x60000 PNG is a few hundred bytes), and
every decoder failure becomes a one-line 4xx error instead of a server error. The decoded
image is turned upright by its EXIF orientation (data/preprocess.py's upright, the step
open_image takes for every other reader), so a phone photo is predicted, and its size
reported, as it was taken.
"""

from __future__ import annotations

import io
import re

from PIL import Image, UnidentifiedImageError

from ..data.preprocess import upright
from ..notices import first_line

# Formats a client may upload; everything else is refused as "not an image" (415).
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")


class UploadError(Exception):
    """A request the server refuses: `status` is the HTTP status, the message one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def set_pixel_limit(max_pixels: int) -> None:
    """PIL's own decompression-bomb limit (process-wide), kept equal to the server's."""
    Image.MAX_IMAGE_PIXELS = int(max_pixels)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open and fully decode an image (the first frame of an animation), upright: its size is
    the upright width and height.

    Errors: 422 empty or corrupt/truncated data, 415 not an image of a known format,
    413 more pixels than max_pixels (a decompression bomb).
    """
    if not data:
        raise UploadError(422, "the upload is empty: send the image bytes")
    try:  # PIL raises DecompressionBombError above twice its limit, and warns above it
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:  # PIL's own threshold is twice the limit: state ours
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)):,} pixels" if found else "more pixels"
        raise UploadError(413, f"image is {size}, over the limit of {max_pixels:,}") from None
    except UnidentifiedImageError:
        raise UploadError(415, f"not an image in a supported format ({', '.join(FORMATS)})") from None
    except Exception as e:  # malformed headers raise all sorts of errors inside PIL plugins
        raise UploadError(422, f"corrupt image header: {first_line(e, 200)}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise UploadError(413, f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}")
    if w < 1 or h < 1:
        raise UploadError(422, f"image has no pixels ({w}x{h})")
    try:
        img.seek(0)
        return upright(img)
    except Exception as e:  # truncated data, bad compressed stream, decoder errors
        raise UploadError(422, f"corrupt or truncated {img.format} image: {first_line(e, 200)}") from None


