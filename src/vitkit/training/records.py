"""A run directory's own files: claiming the directory, metrics.csv with curves.png beside
it (drawn by a plotting callback: the trainer's own curves unless the caller gives another),
and TensorBoard events when tensorboard is installed; how one epoch's row of metrics.csv is
tallied while the epoch runs; and the closing lines of a training command."""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..checkpoint import CURVES_NAME, METRICS_NAME, SHARDED_NAME, STATE_NAME
from ..files import atomic_write_bytes
from .curves import plot_curves
from .distributed import Dist, all_mean

Plot = Callable[[Path, Path], object]  # plot(metrics.csv, curves.png) draws the curves

# Below this many labelled training images a pre-trained model is the better start.
FEW_IMAGES = 5000

METRIC_COLUMNS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                  "images_per_s", "elapsed_s"]


def prepare_run_dir(d: Path, overwrite: bool) -> None:
    """Make sure a new run can write to d; a run already there is replaced only with overwrite."""
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
        raise ValueError(f"{d} already holds a run: continue it with vitkit train --resume {d}, or "
                         f"choose another --run.out")


def written_files(d: Path) -> list[str]:
    """The run files that exist in d, in the order a closing line names them (directories with
    a trailing slash), so that what is reported as written is what is there."""
    from ..checkpoint import CONFIG_NAME, RECIPE_NAME, WEIGHTS_NAME

    names = [WEIGHTS_NAME, CONFIG_NAME, RECIPE_NAME, STATE_NAME, SHARDED_NAME, METRICS_NAME, CURVES_NAME]
    return [n + "/" if (d / n).is_dir() else n for n in names if (d / n).exists()]


def write_metrics(run_dir: Path, metrics: list[dict], plot: Plot | None = plot_curves) -> None:
    """metrics.csv (one row per epoch), and curves.png drawn from it by `plot` (None: no figure).
    A callback, so that a caller above training chooses the figure without training importing it."""
    lines = [",".join(METRIC_COLUMNS)]
    for m in metrics:
        lines.append(",".join("" if m.get(c) is None else f"{m[c]:.6g}" if isinstance(m[c], float)
                              else str(m[c]) for c in METRIC_COLUMNS))
    atomic_write_bytes(run_dir / METRICS_NAME, ("\n".join(lines) + "\n").encode())
    if metrics and plot is not None:
        plot(run_dir / METRICS_NAME, run_dir / CURVES_NAME)


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


class EpochTally:
    """One epoch's training loss, accuracy and speed, shown on a progress bar as it runs and
    closed into its metrics.csv row. Steps add up on the device; only a flush (every
    --run.log_every steps) waits for it and averages over the processes."""

    def __init__(self, dist: Dist, device: torch.device, total: int, initial: int, desc: str, show: bool):
        from tqdm import tqdm

        self.dist = dist
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=not show, leave=False,
                        dynamic_ncols=True, unit="step", file=sys.stderr)
        self.t0 = self.last_t = time.perf_counter()
        self.epoch_time = 0.0
        self.seen, self.batch = 0, 0  # images of all processes; one process's last batch
        self.loss, self.correct, self.steps = 0.0, 0.0, 0  # the flushed steps
        self.pending_loss = torch.zeros((), device=device)
        self.pending_correct = torch.zeros((), device=device)
        self.pending = 0

    def add(self, loss: torch.Tensor, correct: torch.Tensor, batch: int) -> float:
        """Count one step of `batch` images per process; returns the seconds since the last."""
        self.pending_loss += loss
        self.pending_correct += correct
        self.pending += 1
        self.batch = batch
        self.seen += batch * self.dist.world
        now = time.perf_counter()
        elapsed, self.last_t = now - self.last_t, now
        return elapsed

    def flush(self, check: Callable[[float], None] | None = None, lr: float | None = None) -> None:
        """Average the pending steps over the processes into the sums; check(mean loss) may
        stop the run first; with lr, the bar shows the running figures."""
        n = self.pending
        if not n:
            return
        mean_loss = all_mean(self.pending_loss / n, self.dist).item()
        if check is not None:
            check(mean_loss)
        self.loss += mean_loss * n
        self.correct += all_mean(self.pending_correct, self.dist).item() * self.dist.world
        self.steps += n
        if lr is not None:
            acc = self.correct / max(self.seen, 1)
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{acc:.3f}", lr=f"{lr:.2e}",
                                 img_s=f"{self.seen / (self.last_t - self.t0):.0f}")
        self.pending_loss.zero_()
        self.pending_correct.zero_()
        self.pending = 0

    def close(self) -> None:
        """End of the epoch's steps: the bar goes, the epoch's training time is taken."""
        self.bar.close()
        self.epoch_time = time.perf_counter() - self.t0

    def row(self, epoch: int, step: int, res, lr: float, elapsed: float) -> dict:
        """The epoch's metrics.csv row (res: the validation result, or None)."""
        self.flush()
        return {"epoch": epoch, "step": step, "train_loss": self.loss / max(self.steps, 1),
                "train_acc": self.correct / max(self.seen, 1),
                "val_loss": res.loss if res else None, "val_acc": res.top1 if res else None,
                "lr": lr, "images_per_s": self.seen / max(self.epoch_time, 1e-9), "elapsed_s": elapsed}


def epoch_line(row: dict, epochs: int, supervised: bool, multilabel: bool = False) -> str:
    """The line the run prints after each epoch. A multi-label run's train_acc is per-tag accuracy
    and its val_acc the validation mAP (metrics.csv keeps the column names), named so here."""
    train, val = ("train tag acc", "val mAP") if multilabel else ("train acc", "val acc")
    return (f"epoch {row['epoch']:3d}/{epochs}  loss {row['train_loss']:.4f}  "
            + (f"{train} {row['train_acc']:.2%}  " if supervised else "")
            + (f"val loss {row['val_loss']:.4f}  " if row["val_loss"] is not None else "")
            + (f"{val} {row['val_acc']:.2%}  " if row["val_acc"] is not None else "")
            + f"lr {row['lr']:.2e}  {row['images_per_s']:.0f} img/s  {row['elapsed_s']:.0f}s")


def closing_lines(result, cfg, suggest_finetune: bool = False) -> list[str]:
    """What a training command prints when its run (a RunResult of `cfg`, a TrainConfig) ends:
    the result, the files written and what to run next; for an interrupted run, how to continue
    it instead of what comes next."""
    q = shlex.quote
    d = result.run_dir
    lines = []
    if result.val_acc is not None:
        split = "validation" if cfg.data.dataset in ("folder", "csv", "hf", "shards") else "test-split"
        lines.append(f"final {split} {getattr(result, 'val_metric', 'accuracy')} {result.val_acc:.2%} "
                     f"(best {result.best_acc:.2%}) after {result.epoch} epochs, {result.step} steps")
    names = written_files(d)
    lines.append(f"wrote {d}/{', '.join(names)}" if names else f"nothing written to {d}")
    if result.status == "interrupted":
        return [*lines, f"continue with: vitkit train --resume {q(str(d))}"]
    data = (cfg.data.val_path or cfg.data.path) if cfg.data.dataset == "folder" else None
    data_hint = "digits" if cfg.data.dataset == "digits" else q(str(data or "IMAGES"))
    lines.append(f"next: vitkit evaluate {q(str(d))}    vitkit predict {q(str(d))} IMAGE\n"
                 f"      vitkit visualize {q(str(d))} --data {data_hint} --out {q(str(d / 'figures'))}")
    few = (result.train_images or 0) < FEW_IMAGES
    if suggest_finetune and cfg.data.dataset in ("folder", "csv", "hf") and few:
        val = f" --data.val_path {q(str(cfg.data.val_path))}" if cfg.data.val_path else ""
        lines.append(f"with {result.train_images} labelled images a pre-trained ViT usually does better: "
                     f"vitkit finetune google/vit-base-patch16-224 --data.dataset {cfg.data.dataset} "
                     f"--data.path {q(str(cfg.data.path))}{val} --mode linear (on 500 CIFAR-10 images "
                     "transfer beat training from scratch by 10-17 points, benchmarks/README.md)")
    return lines
