"""Small builders shared by the tests."""

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
