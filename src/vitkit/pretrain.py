"""Pre-training without labels: masked autoencoding (MAE) or the paper's masked patch
prediction, on any data vitkit trains on (labels, if the data have them, are ignored).

The run is a normal training run (same loop, checkpoints, exact resume, budgets, metrics)
whose model.safetensors is the encoder alone (a ViT with no head), so `vitkit finetune`,
`probe`, `embed`, `export` and `visualize` open it like any other model folder.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from .checkpoint import read_meta
from .training import TrainConfig, fit
from .training.objectives import PretrainConfig, SelfSupervised
from .training.resume import PRETRAIN_KEY
from .training.trainer import RunResult


def pretrain(cfg: TrainConfig | None, objective: PretrainConfig | None = None,
             resume: str | Path | None = None, on_step=None) -> RunResult:
    """Pre-train an encoder with `objective` (MAE unless told otherwise); with resume=RUN_DIR
    continue that run exactly, with its stored configuration and objective. on_step is
    called as on_step(trainer) after every optimizer step."""
    if resume is not None:  # the run's stored config and objective (training.resume) win
        if PRETRAIN_KEY not in read_meta(Path(resume)):
            raise ValueError(f"{resume}: not a pre-training run (no {PRETRAIN_KEY!r} in config.json); "
                             "continue it with vitkit train --resume")
        return fit(None, resume=resume, on_step=on_step)
    if cfg is None:
        raise ValueError("pretrain needs a TrainConfig, or resume=RUN_DIR")
    objective = objective or PretrainConfig()
    objective.validate()
    if objective.objective == "mae" and cfg.model.stem is None and not cfg.model.variant:
        # MAE drops patches before the encoder: the conv stem of the small default model
        # would see them first
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, stem="patch"))
    if cfg.augment.mixup or cfg.augment.cutmix:
        raise ValueError("--augment.mixup / --augment.cutmix mix labels, which pre-training has none of; "
                         "set them to 0")
    return fit(cfg, resume=resume, extra_meta={PRETRAIN_KEY: dataclasses.asdict(objective)},
               objective=SelfSupervised(objective), on_step=on_step)


def closing_lines(result: RunResult, objective: str) -> list[str]:
    """What `vitkit pretrain` prints when its run ends (`objective`: its name, or "resumed")."""
    last = result.metrics[-1] if result.metrics else {}
    held_out = f", held-out loss {last['val_loss']:.4f}" if last.get("val_loss") is not None else ""
    d = shlex.quote(str(result.run_dir))
    lines = [f"pre-trained ({objective}) for {result.epoch} epochs, {result.step} steps; last train loss "
             f"{last.get('train_loss', float('nan')):.4f}{held_out}",
             f"wrote {d}/model.safetensors (the encoder) and config.json"]
    if result.status == "interrupted":
        return [*lines, f"continue with: vitkit pretrain --resume {d}"]
    return [*lines, f"next: vitkit finetune {d} --data.dataset folder --data.path LABELLED/"]
