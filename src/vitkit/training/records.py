"""A run directory's own files: claiming the directory, metrics.csv with curves.png beside
it, and TensorBoard events when tensorboard is installed."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..checkpoint import CURVES_NAME, METRICS_NAME, STATE_NAME
from ..files import atomic_write_bytes

METRIC_COLUMNS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                  "images_per_s", "elapsed_s"]


def prepare_run_dir(d: Path, overwrite: bool) -> None:
    """Make sure a new run can write to d; a run already there is replaced only with overwrite."""
    from .sharding import SHARDED_NAME

    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write to run directory {d}: {e.strerror or e}") from None
    held = (d / STATE_NAME).exists() or (d / SHARDED_NAME).exists()
    if held and overwrite:
        for name in (STATE_NAME, METRICS_NAME, CURVES_NAME):
            (d / name).unlink(missing_ok=True)
        shutil.rmtree(d / SHARDED_NAME, ignore_errors=True)
    elif held:
        raise ValueError(f"{d} already holds a run: continue it with --resume {d}, or choose "
                         f"another --run.out")


def written_files(d: Path) -> list[str]:
    """The run files that exist in d, in the order a closing line names them (directories with
    a trailing slash), so that what is reported as written is what is there."""
    from ..checkpoint import CONFIG_NAME, RECIPE_NAME, WEIGHTS_NAME
    from .sharding import SHARDED_NAME

    names = [WEIGHTS_NAME, CONFIG_NAME, RECIPE_NAME, STATE_NAME, SHARDED_NAME, METRICS_NAME, CURVES_NAME]
    return [n + "/" if (d / n).is_dir() else n for n in names if (d / n).exists()]


def write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    """metrics.csv (one row per epoch), and curves.png drawn from it."""
    lines = [",".join(METRIC_COLUMNS)]
    for m in metrics:
        lines.append(",".join("" if m.get(c) is None else f"{m[c]:.6g}" if isinstance(m[c], float)
                              else str(m[c]) for c in METRIC_COLUMNS))
    atomic_write_bytes(run_dir / METRICS_NAME, ("\n".join(lines) + "\n").encode())
    try:
        from ..visualize import plot_curves
    except ImportError:
        return
    if metrics:
        plot_curves(run_dir / METRICS_NAME, run_dir / CURVES_NAME)


class TensorBoard:
    """Scalars of each epoch's row, in run_dir/tensorboard (nothing when it is not installed)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.writer = None

    def add(self, row: dict) -> None:
        if self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:
                self.writer = False
                return
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        if self.writer:
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
                if row.get(k) is not None:
                    self.writer.add_scalar(k, row[k], row["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()
