"""Where a run stands, in one dataclass, and the random state that makes a resumed run
continue exactly: both go into every checkpoint (state.pt, or the sharded state.dcp/)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class RunState:
    """Progress of a run: what a checkpoint must hold besides weights and optimizer state."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already trained
    step: int = 0  # optimizer steps in all
    elapsed: float = 0.0  # seconds of training, evaluation and checkpoints (time budgets count these)
    best_acc: float | None = None
    metrics: list[dict] = field(default_factory=list)  # one row per epoch (metrics.csv)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, st: dict) -> RunState:
        """The fields of a checkpoint's state (it holds other entries too)."""
        values = {f.name: st[f.name] for f in dataclasses.fields(cls)}
        values["metrics"] = list(values["metrics"])
        return cls(**values)

    def describe(self) -> str:
        return f"epoch {self.epoch + 1}, batch {self.batch_in_epoch}, step {self.step}"


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
          "python_pos": random.getstate()[2], "numpy": torch.from_numpy(np.random.get_state()[1].copy()),
          "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate((3, tuple(st["python"]), st["python_pos"]))
    np.random.set_state(("MT19937", st["numpy"].numpy().astype(np.uint32), st["numpy_pos"], 0, 0.0))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
