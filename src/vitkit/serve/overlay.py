"""The attention-rollout overlay as PNG bytes, drawn by the same code as `vitkit visualize`.

The picture is the image as the model sees it (converted and resized by the input spec),
enlarged to at least `min_side` pixels, with the rollout map upsampled bilinearly on top in
the figures' colour map, so the page shows exactly what the rollout figure would.
"""

from __future__ import annotations

import io
import threading

import numpy as np

from ..visualize.figures import DPI, _Canvas, _overlay, display_image

_DRAW = threading.Lock()  # matplotlib's font and text caches are not safe to use from two threads


def overlay_png(image: np.ndarray, rollout_map: np.ndarray, min_side: int = 224) -> tuple[bytes, int, int]:
    """(C, H, W) uint8 image and a (gh, gw) rollout map -> (PNG bytes, width, height)."""
    img = display_image(image, min_side=min_side)
    h, w = img.shape[:2]
    with _DRAW:
        canvas = _Canvas(w, h)
        ax = canvas.axes(0, 0, w, h)
        _overlay(ax, img, rollout_map)
        ax.set_axis_off()
        buf = io.BytesIO()
        canvas.fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue(), w, h
