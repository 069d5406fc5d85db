"""curves.png: a run's loss, accuracy and learning rate against epoch, drawn from its
metrics.csv after every epoch (the plotter vitkit.training.records uses unless told otherwise)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def _column(rows: list[dict[str, str]], name: str) -> np.ndarray:
    """A metrics column as floats, NaN where empty or missing (val_* on epochs without validation)."""
    out = []
    for r in rows:
        v = (r.get(name) or "").strip()
        try:
            out.append(float(v))
        except ValueError:
            out.append(np.nan)
    return np.asarray(out, dtype=np.float64)


def plot_curves(metrics_csv: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """Loss, accuracy and learning rate against epoch from a run's metrics.csv.

    Columns: epoch, train_loss, train_acc, val_loss, val_acc, lr (others are ignored;
    empty val_* cells are gaps). Rewrites out_png atomically, so a trainer can call this
    after every epoch while someone looks at the file.
    """
    from matplotlib.ticker import MaxNLocator  # matplotlib loads when a figure is drawn, not with training

    from ..canvas import Canvas

    metrics_csv = Path(metrics_csv)
    with metrics_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    epoch = _column(rows, "epoch")
    c = Canvas(*curves_size())
    panels = [("loss", ["train_loss", "val_loss"]), ("accuracy", ["train_acc", "val_acc"]),
              ("learning rate", ["lr"])]
    for k, (label, names) in enumerate(panels):
        ax = c.axes(70 + k * 380, 50, 300, 300)
        drawn = False
        for name in names:
            y = _column(rows, name)
            ok = ~np.isnan(y) & ~np.isnan(epoch)
            if ok.any():
                ax.plot(epoch[ok], y[ok], marker="o" if ok.sum() < 30 else None, ms=3,
                        label=name.replace("_", " "))
                drawn = True
        if drawn and len(names) > 1:
            ax.legend(fontsize=8)
        if not drawn:
            ax.text(0.5, 0.5, "no values yet", ha="center", va="center", transform=ax.transAxes,
                    color="gray")
        if label == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    c.title(title or f"Training curves ({metrics_csv.parent.name or metrics_csv.name})")
    path, _ = c.save(out_png)
    return path


def curves_size() -> tuple[int, int]:
    """The pixel size plot_curves draws at."""
    return (1200, 400)
