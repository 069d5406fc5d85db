"""Figures of an exact pixel size, written atomically: what the paper's figures
(vitkit.visualize.figures) and a run's training curves (vitkit.training.curves) are drawn on.

Built on matplotlib.figure.Figure directly (Agg rendering, no pyplot, no display, no global
state) with axes placed in pixels, so every file has a known size, and a viewer (or a training
loop rewriting curves.png) never sees half a file.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .files import atomic_write

DPI = 100
HEAT = "inferno"
Size = tuple[int, int]


class Canvas:
    """A figure of exactly width x height pixels with axes placed in pixels from the top left."""

    def __init__(self, width: int, height: int):
        self.w, self.h = int(width), int(height)
        self.fig = Figure(figsize=(self.w / DPI, self.h / DPI), dpi=DPI)

    def axes(self, x: float, y: float, w: float, h: float):
        return self.fig.add_axes((x / self.w, 1 - (y + h) / self.h, w / self.w, h / self.h))

    def colorbar(self, x: float, y: float, h: float, label: str, vmin: float = 0.0, vmax: float = 1.0,
                 cmap: str = HEAT) -> None:
        cax = self.axes(x, y, 14, h)
        sm = ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap)
        cb = self.fig.colorbar(sm, cax=cax)
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)

    def title(self, text: str, size: int = 11) -> None:
        self.fig.suptitle(text, fontsize=size, y=1 - 8 / self.h, va="top")

    def save(self, path: str | Path) -> tuple[Path, Size]:
        path = Path(path)
        atomic_write(path, lambda f: self.fig.savefig(f, format="png", dpi=DPI))
        return path, (self.w, self.h)
