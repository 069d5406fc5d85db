"""What a run directory says about continuing it: the training config it was made with, what
its maker added to config.json, and the objective it trains, so that a resumed run is the run
it continues (a LoRA fine-tuning run trains its adapters again, not the merged weights)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoint import read_meta
from ..files import remove_leftovers
from .config import TrainConfig
from .objectives import PretrainConfig, SelfSupervised

if TYPE_CHECKING:
    from .objectives import Classification

RUN_KEYS = ("model", "classes", "data", "train")  # what the Trainer itself writes into config.json
PRETRAIN_KEY = "pretrain"  # config.json: the objective a pre-training run trains with


def stored_config(run_dir: Path, meta: dict | None = None) -> TrainConfig:
    """The training config a run directory was made with (`meta`: its config.json, if read)."""
    meta = read_meta(run_dir) if meta is None else meta
    if "train" not in meta:
        raise ValueError(f"{run_dir}: a model folder, not a training run (no 'train' in config.json)")
    return TrainConfig.from_dict(meta["train"])


def stored_objective(run_dir: Path, meta: dict) -> Classification | SelfSupervised | None:
    """The objective the run trains when the caller names none: its pre-training objective
    for a pre-training run, LoRA adapters for a LoRA fine-tuning run (state.pt holds the
    adapted model), else None (classification); so one `vitkit train --resume` continues any run."""
    if PRETRAIN_KEY in meta:
        try:
            pre = PretrainConfig(**meta[PRETRAIN_KEY])
            pre.validate()
        except (TypeError, ValueError) as e:
            raise ValueError(f"{run_dir}/config.json: bad {PRETRAIN_KEY!r} entry ({e})") from None
        return SelfSupervised(pre)
    finetune = meta.get("finetune")
    if not isinstance(finetune, dict) or finetune.get("mode") != "lora":
        return None
    from ..finetune.lora import LoraClassification, LoraOptions

    try:
        opts = LoraOptions(**finetune.get("lora", {}))
    except TypeError as e:
        raise ValueError(f"{run_dir}/config.json: bad 'finetune.lora' entry ({e})") from None
    return LoraClassification(opts)


def resumed(run_dir: Path, objective=None, extra_meta: dict | None = None
            ) -> tuple[TrainConfig, object | None, dict]:
    """(config, objective, config.json entries to keep) for continuing run_dir, given
    arguments winning, so that every later save writes the config.json an uninterrupted run
    would have; the leftovers of a save that was killed are removed."""
    meta = read_meta(run_dir)
    cfg = stored_config(run_dir, meta)
    remove_leftovers(run_dir)
    kept = {k: v for k, v in meta.items() if k not in RUN_KEYS}
    return cfg, objective or stored_objective(run_dir, meta), {**kept, **(extra_meta or {})}
