"""Linear probe at the cost of one pass: the frozen backbone sees every training image once per
view and every validation image once; the head is then trained on the cached features alone
(logistic regression by AdamW with cosine decay, a few hundred epochs in seconds), copied into
the model, and the whole model saved as a vitkit model folder that every command opens.

View 1 is the training images as evaluation prepares them; views 2..K are augmented by the
run's augmentation config (crop, flip, RandAugment, MixUp/CutMix, erasing), so K views give
the head K differently augmented copies of the training set for the price of K passes.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import RECIPE_NAME, save_pretrained
from ..data.arrays import iterate_eval
from ..data.augment import AugmentConfig, BatchAugment
from ..data.inputs import InputPlan
from ..data.pipeline import Data, read_data
from ..files import atomic_write_bytes
from ..inference import Runner, prepare
from ..model import ViT
from ..notices import check_ranges, is_number
from ..plan import plan_input
from ..precision import pick_device
from ..training.config import TrainConfig
from ..training.records import prepare_run_dir, write_metrics
from ..training.schedule import lr_factor
from ..training.state import seed_everything
from ..training.trainer import RunResult


@dataclass
class LinearOptions:
    """How the head is trained on the cached features (--linear.KEY).

    Attributes:
        epochs: passes over the cached features.
        lr: AdamW learning rate (cosine decay to 0).
        weight_decay: AdamW weight decay on the head's weights.
        batch_size: features per step.
    """

    epochs: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256

    def validate(self) -> None:
        check_ranges("linear", [
            ("epochs", self.epochs, isinstance(self.epochs, int) and self.epochs >= 1, "1 or more"),
            ("lr", self.lr, is_number(self.lr) and self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay, is_number(self.weight_decay) and self.weight_decay >= 0,
             ">= 0"),
            ("batch_size", self.batch_size, isinstance(self.batch_size, int) and self.batch_size >= 1,
             "1 or more"),
        ])


@contextlib.contextmanager
def _headless(model: ViT):
    """model(x) returns what the head reads (pooled, through pre-logits), by the model's own
    forward path (the class-token fast path included)."""
    head = model.head
    model.head = nn.Identity()
    try:
        yield model
    finally:
        model.head = head


def _pooled(model: ViT, x: torch.Tensor) -> torch.Tensor:
    with _headless(model) as backbone:
        return backbone(x)


@torch.no_grad()
def features(runner: Runner, batches, augment) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 (N, D), targets) of every batch, one backbone pass per batch."""
    feats, targets = [], []
    for x, y in batches:
        x, y = augment(x.to(runner.device), y.to(runner.device))
        feats.append(runner.apply(_pooled, x).float().cpu())
        targets.append(y.cpu())
    return torch.cat(feats), targets


def _targets(parts: list[torch.Tensor], k: int) -> torch.Tensor:
    """Class indices, or probabilities for all when any view was mixed (MixUp/CutMix)."""
    if all(t.ndim == 1 for t in parts):
        return torch.cat(parts)
    return torch.cat([F.one_hot(t, k).float() if t.ndim == 1 else t.float() for t in parts])


def cached_features(runner: Runner, data: Data, augment: AugmentConfig, views: int, batch_size: int,
                    eval_batch_size: int, workers: int = 0):
    """Training features for `views` views and validation features, each image through the
    backbone once per view."""
    k, spec = len(data.classes), data.spec
    size = spec.batch_size_hw
    plain = BatchAugment(AugmentConfig(crop="none", flip=False), k, spec.mean, spec.std, size=size)
    augmented = BatchAugment(data.batch_augment(augment), k, spec.mean, spec.std, size=size)
    wk = workers if not data.in_memory else 0
    train_x, train_y = [], []
    for view in range(views):
        f, t = features(runner, iterate_eval(data.train, batch_size, wk), plain if view == 0 else augmented)
        train_x.append(f)
        train_y += t
    val_x, val_y = features(runner, iterate_eval(data.val, eval_batch_size, wk), plain)
    return torch.cat(train_x), _targets(train_y, k), val_x, torch.cat(val_y)


def train_head(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
               opts: LinearOptions, smoothing: float = 0.0, seed: int = 0) -> list[dict]:
    """Logistic regression of the head on cached features; one metrics row per epoch. One
    thread: the steps are so small that intra-op threads only wait on each other (300 epochs
    of 2,874 digits features took 2 s on one thread against 157 s on two, on a busy 2-core CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_head(head.float(), x, y, val_x, val_y, opts, smoothing, seed)
    finally:
        torch.set_num_threads(threads)


def _train_head(head: nn.Linear, x, y, val_x, val_y, opts: LinearOptions, smoothing: float, seed: int
                ) -> list[dict]:
    opt = torch.optim.AdamW([{"params": [head.weight], "weight_decay": opts.weight_decay},
                             {"params": [head.bias], "weight_decay": 0.0}], lr=opts.lr)
    g = torch.Generator().manual_seed(seed)
    n, bs = len(x), min(opts.batch_size, len(x))
    per_epoch = math.ceil(n / bs)
    total, step, rows, t0 = opts.epochs * per_epoch, 0, [], time.perf_counter()
    hard = y.argmax(1) if y.ndim == 2 else y
    for epoch in range(opts.epochs):
        order = torch.randperm(n, generator=g)
        loss_sum = correct = 0.0
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            lr = opts.lr * lr_factor(step / total, 0.0, "cosine", 0.0)
            for group in opt.param_groups:
                group["lr"] = lr
            logits = head(x[idx])
            loss = F.cross_entropy(logits, y[idx], label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += (logits.detach().argmax(1) == hard[idx]).sum().item()
        with torch.no_grad():
            val_logits = head(val_x)
        rows.append({"epoch": epoch + 1, "step": step, "train_loss": loss_sum / n, "train_acc": correct / n,
                     "val_loss": F.cross_entropy(val_logits, val_y).item(),
                     "val_acc": (val_logits.argmax(1) == val_y).float().mean().item(), "lr": lr,
                     "images_per_s": None, "elapsed_s": time.perf_counter() - t0})
    return rows


def linear_finetune(model: ViT, cfg: TrainConfig, views: int, opts: LinearOptions, extra_meta: dict,
                    plan: InputPlan | None = None) -> RunResult:
    """Train `model`'s (new) head on cached features of its frozen backbone; save the model.
    `plan`: cfg.data's input plan, when the caller made it already."""
    opts.validate()
    if views < 1:
        raise ValueError(f"--views {views}: 1 or more views of the training images")
    if cfg.augment.progressive:  # each view's features are computed once, at the model's size
        raise ValueError("--augment.progressive: the linear mode caches features at the model's size; "
                         "use --mode full or lora to grow the input")
    run = cfg.run
    device = pick_device(run.device)
    if run.threads:
        torch.set_num_threads(run.threads)
    seed_everything(run.seed, run.deterministic)
    data = read_data(cfg.data, plan or plan_input(cfg.data, cfg.augment, cfg.model))
    if model.config.num_classes != len(data.classes):
        raise ValueError(f"model has {model.config.num_classes} classes, data has {len(data.classes)}")
    out = Path(run.out)
    prepare_run_dir(out, run.overwrite)
    model = model.to(device)
    runner = prepare(model, device, run.precision, engine="torch", compile=False)  # the frozen backbone
    precision = runner.precision
    t0 = time.perf_counter()
    x, y, val_x, val_y = cached_features(runner, data, cfg.augment, views, run.batch_size,
                                         run.eval_batch_size, cfg.data.workers)
    seconds = time.perf_counter() - t0
    print(f"features: {len(x):,} training ({views} view{'s' * (views > 1)}), {len(val_x):,} validation, "
          f"dimension {x.shape[1]}, {precision}; {(len(x) + len(val_x)) / max(seconds, 1e-9):.0f} img/s, "
          f"{seconds:.1f}s", flush=True)
    head = nn.Linear(x.shape[1], len(data.classes))
    with torch.no_grad():
        head.weight.copy_(model.head.weight)
        head.bias.copy_(model.head.bias)
    rows = train_head(head, x, y, val_x, val_y, opts, cfg.augment.label_smoothing, run.seed)
    with torch.no_grad():
        model.head.weight.copy_(head.weight)
        model.head.bias.copy_(head.bias)
    last = rows[-1]
    print(f"head: {opts.epochs} epochs on cached features in {last['elapsed_s']:.1f}s; train acc "
          f"{last['train_acc']:.2%}, val acc {last['val_acc']:.2%}", flush=True)
    import yaml

    recipe = cfg.to_dict()
    save_pretrained(model.cpu(), out, {"classes": data.classes, "data": data.spec.to_dict(), "train": recipe,
                                       **extra_meta})
    atomic_write_bytes(out / RECIPE_NAME, yaml.safe_dump(recipe, sort_keys=False).encode())
    write_metrics(out, rows)
    best = max(r["val_acc"] for r in rows)
    return RunResult(out, "finished", opts.epochs, last["step"], last["val_acc"], best, rows)

