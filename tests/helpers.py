"""Small builders shared by the tests."""

import os
import signal

from vitkit.data.augment import AugmentConfig
from vitkit.data.pipeline import DataConfig
from vitkit.training import ModelSpec, OptimConfig, RunConfig, TrainConfig


def tiny_train_config(out, epochs=2, **sections) -> TrainConfig:
    """A digits run small enough to train in a few seconds."""
    cfg = TrainConfig(
        data=DataConfig(dataset="digits"),
        model=ModelSpec(patch_size=2, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64,
                        stem="patch"),
        optim=OptimConfig(lr=2e-3, weight_decay=0.05),
        augment=AugmentConfig(crop="none"),
        run=RunConfig(epochs=epochs, batch_size=64, out=str(out), progress=False, precision="fp32"),
    )
    for name, changes in sections.items():
        for k, v in changes.items():
            setattr(getattr(cfg, name), k, v)
    return cfg


# The model and run options of a CLI run small enough to train on digits in a few seconds.
TINY_ARGS = ["--model.patch_size", "2", "--model.hidden_size", "32", "--model.num_layers", "2",
             "--model.num_heads", "2", "--model.mlp_size", "64", "--model.stem", "patch",
             "--run.batch_size", "64", "--run.progress", "false", "--run.precision", "fp32"]


def interrupt_at(step: int):
    """An on_step hook that sends this process SIGINT at `step`, as Ctrl-C would."""
    def hook(trainer):
        if trainer.state.step == step:
            os.kill(os.getpid(), signal.SIGINT)
    return hook
