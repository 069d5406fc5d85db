"""Training: configuration, the loop, schedules, distributed helpers and run state."""

from .config import ModelSpec, OptimConfig, RunConfig, TrainConfig
from .trainer import RunResult, fit

__all__ = ["ModelSpec", "OptimConfig", "RunConfig", "TrainConfig", "RunResult", "fit"]
