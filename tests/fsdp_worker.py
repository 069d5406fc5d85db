"""Run by tests/test_fsdp.py under torchrun: one FSDP training run on the digits.

usage: fsdp_worker.py OUT [--stop_at STEP] [--resume] [--logits FILE]
"""

import argparse
import os
import signal

import torch

from vitkit.data.augment import AugmentConfig
from vitkit.data.pipeline import DataConfig
from vitkit.training import ModelSpec, OptimConfig, RunConfig, TrainConfig
from vitkit.training.distributed import shutdown
from vitkit.training.resume import stored_config
from vitkit.training.trainer import Trainer


def config(out: str, strategy: str = "fsdp", checkpointing: str = "selective") -> TrainConfig:
    return TrainConfig(
        data=DataConfig(dataset="digits"),
        model=ModelSpec(patch_size=2, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64, stem="patch"),
        optim=OptimConfig(lr=2e-3, weight_decay=0.05, ema=0.9),
        augment=AugmentConfig(crop="none"),
        run=RunConfig(epochs=2, batch_size=64, out=out, progress=False, precision="fp32", threads=1,
                      strategy=strategy, activation_checkpointing=checkpointing),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--stop_at", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--logits", default="")
    a = ap.parse_args()

    def stop(trainer):
        if trainer.state.step == a.stop_at:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = stored_config(a.out) if a.resume else config(a.out)
    trainer = Trainer(cfg, resume=a.out if a.resume else None, on_step=stop if a.stop_at else None)
    try:
        result = trainer.run()
        if a.logits:  # the trained (sharded) model's own logits, every rank taking part
            x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
            trainer.model.eval()
            with torch.no_grad():
                logits = trainer.model(x)
            if trainer.dist.main:
                torch.save({"x": x, "logits": logits, "status": result.status}, a.logits)
    finally:
        shutdown(trainer.dist)


if __name__ == "__main__":
    main()
