"""How the model is laid out over processes: a strategy owns wrapping the model, the EMA,
gradient synchronization, the weights a run publishes and the checkpointed state.

- Replicated: one process, or DistributedDataParallel (every process holds the whole model;
  gradients are all-reduced; rank 0 writes state.pt);
- Sharded: FSDP2 per encoder block (vitkit.training.sharding): parameters, gradients and
  optimizer state are split over the processes; every rank writes its part of state.dcp/.

The training loop calls the same methods whichever is in use.
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import STATE_NAME, load_state_dict_checked
from ..files import atomic_torch_save
from ..model import ViT
from .distributed import Dist
from .memory import apply_activation_checkpointing
from .objectives import SUPERVISED


class Replicated:
    """Every process holds the whole model (one process, or DDP)."""

    sharded = False

    def __init__(self, dist: Dist, device: torch.device, precision: str):
        self.dist, self.device, self.precision = dist, device, precision
        self.model: nn.Module | None = None
        self.ddp: DistributedDataParallel | None = None

    def build_on_meta(self, resume: bool) -> bool:
        """Whether this process builds the initial model without memory (its weights come later)."""
        return False

    def setup(self, model: ViT, objective, spec, checkpointing: str, resume: bool) -> nn.Module:
        """The objective's module around `model`, on this process's device (and DDP-wrapped)."""
        model = apply_activation_checkpointing(model.to(self.device), checkpointing)
        self.model = objective.wrap(model, spec).to(self.device)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        return self.model

    @property
    def net(self) -> nn.Module:
        """What the forward pass calls (DDP synchronizes gradients through it)."""
        return self.ddp or self.model

    def accumulating(self, last: bool):
        """Context for one accumulation chunk: gradients are synchronized after the last only."""
        return self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()

    def make_ema(self, decay: float):
        if decay <= 0:
            return None
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        return AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def update_ema(self, ema) -> None:
        ema.update_parameters(self.model)

    def eval_model(self, ema, step: int = -1) -> nn.Module | None:
        """The model to evaluate and publish (the EMA's when EMA is on)."""
        return ema.module if ema is not None else self.model

    def published_state(self, ema, objective, step: int) -> dict[str, torch.Tensor] | None:
        """The weights the run publishes as model.safetensors (None on ranks that write nothing)."""
        if not self.dist.main:
            return None
        return objective.published(self.eval_model(ema, step)).state_dict()

    def save_state(self, run_dir: Path, optimizer, ema, progress: dict) -> None:
        """state.pt: weights, optimizer, EMA and progress, for an exact resume (rank 0 writes)."""
        if not self.dist.main:
            return
        state = {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                 "optimizer": optimizer.state_dict(),
                 "ema": ema.state_dict() if ema is not None else None, **progress}
        atomic_torch_save(run_dir / STATE_NAME, state)

    def load_state(self, run_dir: Path, optimizer, ema) -> dict:
        """Restore weights, optimizer and EMA from state.pt; returns the progress entries."""
        path = run_dir / STATE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no training state to resume from")
        try:
            st = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # never unpickle code from a file
            raise ValueError(f"{path}: holds objects other than tensors (pickled code); not loaded") from None
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"{path}: unreadable training state ({type(e).__name__}: {first})") from None
        load_state_dict_checked(self.model, st["model"], str(path))
        optimizer.load_state_dict(st["optimizer"])
        if ema is not None and st.get("ema") is not None:
            ema.load_state_dict(st["ema"])
        return st


class Sharded(Replicated):
    """FSDP2: each process holds 1/world of every parameter, gradient and optimizer state."""

    sharded = True

    def __init__(self, dist: Dist, device: torch.device, precision: str):
        super().__init__(dist, device, precision)
        self._gathered: tuple[int, dict] | None = None  # (step, full weights on rank 0)

    def build_on_meta(self, resume: bool) -> bool:
        # only rank 0 builds the initial weights (on the CPU); a resumed run's come from its
        # checkpoint, so no rank builds them
        return resume or not self.dist.main

    def setup(self, model: ViT, objective, spec, checkpointing: str, resume: bool) -> nn.Module:
        from .sharding import shard_model

        if objective.name not in SUPERVISED:
            raise ValueError(f"--run.strategy fsdp: not available for the {objective.name} objective "
                             "(use ddp)")
        with torch.device("meta"):
            skeleton = ViT(model.config)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        for name, p in skeleton.named_parameters():
            p.requires_grad_(name in trainable)
        apply_activation_checkpointing(skeleton, checkpointing)
        full = model if self.dist.main and not resume else None
        self.model = shard_model(skeleton, self.device, self.precision, full, broadcast=not resume)
        return self.model

    def accumulating(self, last: bool):
        # reduce-scatter the gradients once, after the last chunk
        self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def make_ema(self, decay: float):
        if decay <= 0:
            return None
        from .sharding import ShardedEMA

        return ShardedEMA(self.model, decay)

    def update_ema(self, ema) -> None:
        ema.update(self.model)

    def gathered_weights(self, ema, step: int) -> dict[str, torch.Tensor]:
        """The whole model (the EMA weights when EMA is on) on rank 0's CPU, gathered once per
        step however often it is asked for; empty on the other ranks. Every rank must call."""
        from .sharding import full_state_dict

        if self._gathered is None or self._gathered[0] != step:
            ctx = ema.applied(self.model) if ema is not None else contextlib.nullcontext()
            with ctx:
                self._gathered = (step, full_state_dict(self.model))
        return self._gathered[1]

    def eval_model(self, ema, step: int = -1) -> nn.Module | None:
        """A plain model with the gathered weights on rank 0's device; None elsewhere."""
        from .sharding import _restore_buffers

        sd = self.gathered_weights(ema, step)
        if not self.dist.main:
            return None
        with torch.device("meta"):
            model = ViT(self.model.config)
        model.to_empty(device=self.device)
        model.load_state_dict(sd)
        _restore_buffers(model)
        return model

    def published_state(self, ema, objective, step: int) -> dict[str, torch.Tensor] | None:
        sd = self.gathered_weights(ema, step)
        return sd if self.dist.main else None

    def save_state(self, run_dir: Path, optimizer, ema, progress: dict) -> None:
        from .sharding import save_sharded

        save_sharded(run_dir, self.model, optimizer, ema, progress)

    def load_state(self, run_dir: Path, optimizer, ema) -> dict:
        from .sharding import load_sharded

        return load_sharded(run_dir, self.model, optimizer, ema)


def make_strategy(name: str, dist: Dist, device: torch.device, precision: str) -> Replicated:
    """"ddp" (also a single process) or "fsdp"."""
    return (Sharded if name == "fsdp" else Replicated)(dist, device, precision)
