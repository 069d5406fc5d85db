"""The training loop: data, model, optimizer and schedule, checkpoints that survive anything.

A run directory holds:
- config.json: the model config, classes, input spec and the resolved training config;
- train.yaml: the same training config, ready for ``vitkit train --config``;
- model.safetensors: the weights alone (the EMA weights when EMA is on);
- state.pt: everything needed to continue exactly (weights, optimizer, EMA, RNG states,
  epoch, step within the epoch, best metric, metrics so far), loadable with weights_only;
- metrics.csv, curves.png, and TensorBoard event files when tensorboard is installed.
Every file is replaced atomically. SIGINT/SIGTERM finish the current step, save, and exit.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import (
    CURVES_NAME,
    METRICS_NAME,
    RECIPE_NAME,
    STATE_NAME,
    WEIGHTS_NAME,
    read_config,
    read_meta,
    write_meta,
)
from ..data.augment import BatchAugment
from ..data.geometry import patch_problem
from ..data.pipeline import Data, array_batches, load_data, num_batches
from ..evaluation import evaluate_model
from ..files import atomic_save_tensors, atomic_write_bytes
from ..model import ViT
from ..precision import autocast, pick_device, training_precision
from .config import TrainConfig
from .distributed import Dist, all_mean, any_rank, barrier, init_distributed, shutdown
from .objectives import Classification
from .schedule import build_optimizer, lr_factor
from .state import RunState, rng_state, seed_everything, set_rng_state
from .strategies import make_strategy

METRIC_COLUMNS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                  "images_per_s", "elapsed_s"]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "finished", "interrupted" or "budget"
    epoch: int
    step: int
    val_acc: float | None
    best_acc: float | None
    metrics: list[dict] = field(default_factory=list)


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes its step, saves, and returns."""

    def __init__(self):
        self.set = False
        self.signal_name = ""
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second signal: stop at once (files on disk are still whole)
            raise KeyboardInterrupt
        self.set = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name} received: finishing this step, then saving...", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# ---- the run ----------------------------------------------------------------------------------

class Trainer:
    def __init__(self, cfg: TrainConfig, model: ViT | None = None, resume: str | Path | None = None,
                 extra_meta: dict | None = None, on_step=None, objective=None):
        self.cfg = cfg
        self.objective = objective or Classification()  # what is learnt: head, loss, metric
        self.supervised = self.objective.name == "classification"
        self.on_step = on_step  # called as on_step(trainer) after every optimizer step
        self.device = pick_device(cfg.run.device)
        self.dist: Dist = init_distributed(self.device.type, need_group=cfg.run.strategy == "fsdp")
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.precision = training_precision(cfg.run.precision, self.device)
        self.strategy = make_strategy(cfg.run.strategy, self.dist, self.device, self.precision)
        seed_everything(cfg.run.seed + self.dist.rank, cfg.run.deterministic)
        self.run_dir = Path(resume) if resume else Path(cfg.run.out)
        self.extra_meta = extra_meta or {}

        # the decoded-image cache is per host (~/.cache/vitkit): the first process of each host
        # (LOCAL_RANK 0) builds it while the others wait, then they read it
        first_on_host = self.dist.local_rank == 0
        if self.dist.enabled and not first_on_host:
            barrier(self.dist)
        self.data: Data = load_data(cfg.data, cfg.augment, cfg.model)
        if self.dist.enabled and first_on_host:
            barrier(self.dist)
        self.log(*self.data.notes)
        if self.supervised and len(self.data.classes) < 2:
            raise ValueError(f"{cfg.data.path or cfg.data.dataset}: {len(self.data.classes)} class "
                             f"({', '.join(self.data.classes)}); supervised training needs root/<class>/ "
                             "folders of at least two classes (vitkit pretrain learns from unlabelled "
                             "images)")
        on_meta = self.strategy.build_on_meta(bool(resume))
        with torch.device("meta") if on_meta and model is None else contextlib.nullcontext():
            if model is None and resume:  # the run's own architecture, whatever built it
                model = ViT(read_config(self.run_dir))
            if model is None:
                mcfg = cfg.model.build_config(self.data.spec.image_size, self.data.spec.channels,
                                              len(self.data.classes) if self.supervised else 0)
                model = ViT(mcfg)
        self.check_model_fits_data(model)
        if cfg.optim.train_only == "head":
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith("head."))
        self.model = self.strategy.setup(model, self.objective, self.data.spec,
                                         cfg.run.activation_checkpointing, bool(resume))
        model = self.model
        c = model.config
        self.log(f"model: {c.num_layers} layers, D {c.hidden_size}, MLP {c.mlp_size}, {c.num_heads} heads, "
                 f"patch {c.patch_size} ({c.grid_size[0]}x{c.grid_size[1]} grid), stem {c.stem}, "
                 f"{sum(p.numel() for p in model.parameters()):,} parameters; {self.device.type}, "
                 f"{self.precision}"
                 + (f"; {cfg.run.strategy} over {self.dist.world} processes" if self.dist.enabled else "")
                 + (f"; activation checkpointing: {cfg.run.activation_checkpointing}"
                    if cfg.run.activation_checkpointing != "none" else ""))
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.ema = self.strategy.make_ema(cfg.optim.ema)
        # a streamed random resized crop was taken on decoding, at full resolution
        self.augment = BatchAugment(self.data.batch_augment(cfg.augment), len(self.data.classes),
                                    self.data.spec.mean, self.data.spec.std, size=self.data.spec.image_size)
        self.batch_size = cfg.run.batch_size
        if self.batch_size % (self.dist.world * cfg.optim.accumulate):
            raise ValueError(f"batch size {self.batch_size} is not divisible by processes x accumulation "
                             f"steps ({self.dist.world} x {cfg.optim.accumulate})")
        n_train = len(self.data.train)
        if n_train < self.batch_size:
            self.batch_size = max(self.dist.world * cfg.optim.accumulate,
                                  n_train // (self.dist.world * cfg.optim.accumulate)
                                  * self.dist.world * cfg.optim.accumulate)
            self.log(f"batch size lowered to {self.batch_size}: only {n_train} training images")
        self.steps_per_epoch = num_batches(n_train, self.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.run.epochs
        self.state = RunState()
        self.tb = None
        if resume:
            self.load_state()
        elif self.dist.main:
            self.prepare_run_dir()

    # -- logging
    def log(self, *lines: str) -> None:
        if self.dist.main:
            for line in lines:
                print(line, flush=True)

    def check_model_fits_data(self, model: ViT) -> None:
        c, spec = model.config, self.data.spec
        problems = []
        if self.supervised and c.num_classes != len(self.data.classes):
            problems.append(f"model has {c.num_classes} classes, data has {len(self.data.classes)} "
                            f"({', '.join(self.data.classes[:10])})")
        if c.num_channels != spec.channels:
            problems.append(f"model takes {c.num_channels} channels, data has {spec.channels}")
        if patch_problem(spec.image_size, c.patch_size):
            problems.append(patch_problem(spec.image_size, c.patch_size))
        if problems:
            raise ValueError("model does not fit the data: " + "; ".join(problems))

    # -- files
    def prepare_run_dir(self) -> None:
        d = self.run_dir
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ValueError(f"cannot write to run directory {d}: {e.strerror or e}") from None
        from .sharding import SHARDED_NAME

        held = (d / STATE_NAME).exists() or (d / SHARDED_NAME).exists()
        if held and self.cfg.run.overwrite:
            for name in (STATE_NAME, METRICS_NAME, CURVES_NAME):
                (d / name).unlink(missing_ok=True)
            import shutil

            shutil.rmtree(d / SHARDED_NAME, ignore_errors=True)
        elif held:
            raise ValueError(f"{d} already holds a run: continue it with --resume {d}, or choose "
                             f"another --run.out")

    def meta(self) -> dict:
        """What config.json holds beside the model config (vitkit.checkpoint's layout)."""
        classes = self.data.classes if self.supervised else []  # an encoder: no classes to name
        return {"classes": classes, "data": self.data.spec.to_dict(), "train": self.cfg.to_dict(),
                **self.extra_meta}

    def eval_model(self) -> torch.nn.Module | None:
        """The model to evaluate (FSDP: every rank must call; None but on rank 0)."""
        return self.strategy.eval_model(self.ema, self.state.step)

    def progress_state(self) -> dict:
        """Everything a checkpoint holds besides weights and optimizer state."""
        return {**self.state.to_dict(), "rng": rng_state(), "train": self.cfg.to_dict(),
                "world": self.dist.world}

    def save(self) -> None:
        """Write every run file atomically; the training state last, so it never points past
        the weights (FSDP: every rank takes part in gathering the weights and writing the state)."""
        import yaml

        weights = self.strategy.published_state(self.ema, self.objective, self.state.step)
        if self.dist.main:
            d = self.run_dir
            write_meta(d, self.objective.published(self.model).config, self.meta())
            atomic_write_bytes(d / RECIPE_NAME, yaml.safe_dump(self.cfg.to_dict(), sort_keys=False).encode())
            atomic_save_tensors(d / WEIGHTS_NAME, weights)
            self.write_metrics()
        self.strategy.save_state(self.run_dir, self.optimizer, self.ema, self.progress_state())

    def load_state(self) -> None:
        st = self.strategy.load_state(self.run_dir, self.optimizer, self.ema)
        if self.dist.rank == 0:
            set_rng_state(st["rng"])
        self.state = RunState.from_dict(st)
        saved_by = f" (saved by {st['world']} processes)" if self.strategy.sharded else ""
        self.log(f"resuming {self.run_dir}{saved_by} at {self.state.describe()}")

    def write_metrics(self) -> None:
        lines = [",".join(METRIC_COLUMNS)]
        for m in self.state.metrics:
            lines.append(",".join("" if m.get(c) is None else f"{m[c]:.6g}" if isinstance(m[c], float)
                                  else str(m[c]) for c in METRIC_COLUMNS))
        atomic_write_bytes(self.run_dir / METRICS_NAME, ("\n".join(lines) + "\n").encode())
        try:
            from ..visualize import plot_curves
        except ImportError:
            return
        if self.state.metrics:
            plot_curves(self.run_dir / METRICS_NAME, self.run_dir / CURVES_NAME)

    def tensorboard(self, row: dict) -> None:
        if not self.dist.main:
            return
        if self.tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:
                self.tb = False
                return
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if self.tb:
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
                if row.get(k) is not None:
                    self.tb.add_scalar(k, row[k], row["step"])
            self.tb.flush()

    # -- the loop
    def progress(self) -> float:
        if self.cfg.run.time_budget:
            return min(self.state.elapsed / (60 * self.cfg.run.time_budget), 1.0)
        return self.state.step / max(self.total_steps, 1)

    def set_lr(self) -> float:
        o = self.cfg.optim
        lr = o.lr * lr_factor(self.progress(), o.warmup, o.schedule, o.min_lr_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over a (per-rank) batch, split into accumulation chunks."""
        net = self.strategy.net
        acc = self.cfg.optim.accumulate
        smoothing = self.cfg.augment.label_smoothing
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        for i, (xc, yc) in enumerate(zip(x.chunk(acc), y.chunk(acc), strict=True)):
            with self.strategy.accumulating(i == acc - 1) if acc > 1 else contextlib.nullcontext():
                with autocast(self.device, self.precision):
                    loss, hits = self.objective.loss(net, xc, yc, smoothing)
                (loss / acc).backward()
            loss_sum += loss.detach() / acc
            correct += hits
        if self.cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.strategy.update_ema(self.ema)
        return loss_sum, correct

    def batches(self, epoch: int, start: int):
        if self.data.in_memory:
            yield from array_batches(self.data.train, self.batch_size, epoch, self.cfg.run.seed,
                                     self.dist.rank, self.dist.world, start)
            return
        from torch.utils.data import DataLoader, DistributedSampler

        from ..data.shards import ShardStream

        if isinstance(self.data.train, ShardStream):  # every rank the same number of whole batches
            ds = self.data.train
            ds.batch_size, ds.rank, ds.world, ds.seed = self.batch_size, self.dist.rank, self.dist.world, \
                self.cfg.run.seed
            ds.set_epoch(epoch)
            loader = DataLoader(ds, batch_size=self.batch_size // self.dist.world,
                                num_workers=self.cfg.data.workers, pin_memory=self.device.type == "cuda")
            for i, batch in enumerate(loader):
                if i >= start:
                    yield batch
            return
        sampler = DistributedSampler(self.data.train, self.dist.world, self.dist.rank, shuffle=True,
                                     seed=self.cfg.run.seed, drop_last=True)
        sampler.set_epoch(epoch)
        loader = DataLoader(self.data.train, batch_size=self.batch_size // self.dist.world,
                            sampler=sampler, num_workers=self.cfg.data.workers, drop_last=True,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for i, batch in enumerate(loader):
            if i >= start:
                yield batch

    def evaluate(self):
        model = self.eval_model()  # FSDP: every rank takes part in gathering it onto rank 0
        if model is None:
            return None
        if not self.supervised:
            return self.objective.evaluate(model, self.data.val, self.data.spec, self.cfg.run.eval_batch_size,
                                           self.device, self.precision)
        return evaluate_model(model, self.data.val, self.data.spec, self.data.classes,
                              self.cfg.run.eval_batch_size, self.device, self.precision,
                              self.cfg.data.workers if not self.data.in_memory else 0)

    def run(self) -> RunResult:
        from tqdm import tqdm

        cfg = self.cfg
        status = "finished"
        val_acc = self.state.metrics[-1]["val_acc"] if self.state.metrics else None
        with StopFlag() as stop:
            while self.state.epoch < cfg.run.epochs:
                self.model.train()
                start = self.state.batch_in_epoch
                bar = tqdm(total=self.steps_per_epoch, initial=start, desc=f"epoch {self.state.epoch + 1}/"
                           f"{cfg.run.epochs}", disable=not (self.dist.main and cfg.run.progress),
                           leave=False, dynamic_ncols=True, unit="step", file=sys.stderr)
                t0, seen, loss_acc, correct_acc, n_acc = time.perf_counter(), 0, 0.0, 0.0, 0
                pending_loss = torch.zeros((), device=self.device)
                pending_correct = torch.zeros((), device=self.device)
                pending_n, last_t = 0, t0
                interrupted = out_of_time = False
                for x, y in self.batches(self.state.epoch, start):
                    lr = self.set_lr()
                    x = x.to(self.device, non_blocking=True)
                    y = y.to(self.device, non_blocking=True)
                    x, y = self.augment(x, y)
                    loss, correct = self.train_step(x, y)
                    self.state.step += 1
                    self.state.batch_in_epoch += 1
                    pending_loss += loss
                    pending_correct += correct
                    pending_n += 1
                    seen += len(x) * self.dist.world
                    now = time.perf_counter()
                    self.state.elapsed += now - last_t
                    last_t = now
                    if self.on_step is not None:
                        self.on_step(self)
                    if pending_n >= cfg.run.log_every or self.state.batch_in_epoch == self.steps_per_epoch:
                        mean_loss = all_mean(pending_loss / pending_n, self.dist).item()
                        if not math.isfinite(mean_loss):
                            raise NonFiniteLoss(
                                f"loss became {mean_loss} at step {self.state.step} "
                                f"(epoch {self.state.epoch + 1}); "
                                f"the last good checkpoint in {self.run_dir} is kept. Try a lower "
                                f"--optim.lr or --run.precision fp32")
                        loss_acc += mean_loss * pending_n
                        correct_acc += all_mean(pending_correct, self.dist).item() * self.dist.world
                        n_acc += pending_n
                        bar.update(pending_n)
                        bar.set_postfix(loss=f"{mean_loss:.3f}",
                                        acc=f"{correct_acc / max(n_acc * len(x) * self.dist.world, 1):.3f}",
                                        lr=f"{lr:.2e}", img_s=f"{seen / (now - t0):.0f}")
                        pending_loss.zero_()
                        pending_correct.zero_()
                        pending_n = 0
                    if cfg.run.time_budget and self.progress() >= 1.0:
                        out_of_time = True
                    if any_rank(stop.set or out_of_time, self.dist, self.device):
                        interrupted = not out_of_time
                        break
                bar.close()
                epoch_time = time.perf_counter() - t0
                if interrupted:
                    if pending_n:
                        loss_acc += all_mean(pending_loss / pending_n, self.dist).item() * pending_n
                    self.save()
                    barrier(self.dist)
                    status = "interrupted"
                    self.log(f"stopped at epoch {self.state.epoch + 1}, step {self.state.step}; "
                             f"saved {self.run_dir}")
                    break
                last = self.state.epoch + 1 == cfg.run.epochs or out_of_time
                due = last or (self.state.epoch + 1) % max(cfg.run.eval_every, 1) == 0
                res = self.evaluate() if due and (self.dist.main or self.strategy.sharded) else None
                if pending_n:
                    loss_acc += all_mean(pending_loss / pending_n, self.dist).item() * pending_n
                    correct_acc += all_mean(pending_correct, self.dist).item() * self.dist.world
                    n_acc += pending_n
                steps_done = max(n_acc, 1)
                row = {"epoch": self.state.epoch + 1, "step": self.state.step,
                       "train_loss": loss_acc / steps_done,
                       "train_acc": correct_acc / max(seen, 1),
                       "val_loss": res.loss if res else None, "val_acc": res.top1 if res else None,
                       "lr": self.optimizer.param_groups[0]["lr"],
                       "images_per_s": seen / max(epoch_time, 1e-9), "elapsed_s": self.state.elapsed}
                self.state.metrics.append(row)
                if res is not None and res.top1 is not None:
                    val_acc = res.top1
                    self.state.best_acc = max(self.state.best_acc or 0.0, res.top1)
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                self.log(f"epoch {row['epoch']:3d}/{cfg.run.epochs}  loss {row['train_loss']:.4f}  "
                         + (f"train acc {row['train_acc']:.2%}  " if self.supervised else "")
                         + (f"val loss {res.loss:.4f}  " if res else "")
                         + (f"val acc {res.top1:.2%}  " if res and res.top1 is not None else "")
                         + f"lr {row['lr']:.2e}  "
                         f"{row['images_per_s']:.0f} img/s  {self.state.elapsed:.0f}s")
                self.save()
                self.tensorboard(row)
                barrier(self.dist)
                if out_of_time:
                    status = "budget"
                    self.log(f"time budget of {cfg.run.time_budget} min reached")
                    break
        if self.tb:
            self.tb.close()
        st = self.state
        return RunResult(self.run_dir, status, st.epoch, st.step, val_acc, st.best_acc, st.metrics)


def fit(cfg: TrainConfig | None, model: ViT | None = None, resume: str | Path | None = None,
        extra_meta: dict | None = None, on_step=None, objective=None) -> RunResult:
    """Train (or continue) a run and return where it went and how well it did.

    With resume=RUN_DIR the configuration stored in that run is used and the run continues
    from the exact step it stopped at.
    """
    if resume is not None:
        cfg = stored_config(Path(resume))
    elif cfg is None:
        raise ValueError("fit needs a TrainConfig, or resume=RUN_DIR")
    trainer = Trainer(cfg, model=model, resume=resume, extra_meta=extra_meta, on_step=on_step,
                      objective=objective)
    try:
        return trainer.run()
    finally:
        shutdown(trainer.dist)


def stored_config(run_dir: Path) -> TrainConfig:
    """The training config a run directory was made with."""
    meta = read_meta(run_dir)
    if "train" not in meta:
        raise ValueError(f"{run_dir}: a model folder, not a training run (no 'train' in config.json)")
    return TrainConfig.from_dict(meta["train"])
