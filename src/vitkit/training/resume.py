"""What a run directory says about continuing it: the training config it was made with, what
its maker added to config.json, and the objective it trains, so that a resumed run is the run
it continues (a LoRA fine-tuning run trains its adapters again, not the merged weights).

An objective defined above training (LoRA fine-tuning, distillation) is found by the name its
run stored in config.json ("objective"), among the entry points of group "vitkit.objectives":
each names a factory that takes the run's config.json entries and returns the objective. So
training imports none of them, and a package that adds an objective registers it the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
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
OBJECTIVE_KEY = "objective"  # config.json: the name of an objective registered in OBJECTIVES
OBJECTIVES = "vitkit.objectives"  # the entry-point group: name -> factory(meta) -> objective


def stored_config(run_dir: Path, meta: dict | None = None) -> TrainConfig:
    """The training config a run directory was made with (`meta`: its config.json, if read)."""
    meta = read_meta(run_dir) if meta is None else meta
    if "train" not in meta:
        raise ValueError(f"{run_dir}: a model folder, not a training run (no 'train' in config.json)")
    return TrainConfig.from_dict(meta["train"])


def objective_name(meta: dict) -> str | None:
    """The registered objective a run's config.json names, or None (classification or
    pre-training). A LoRA run written before the name was stored is known by its mode."""
    name = meta.get(OBJECTIVE_KEY)
    if name is None:
        finetune = meta.get("finetune")
        name = "lora" if isinstance(finetune, dict) and finetune.get("mode") == "lora" else None
    return name


def objective_factory(name: str) -> Callable[[dict], object]:
    """The factory registered as `name` in group vitkit.objectives; a one-line ValueError naming
    the installed ones when there is none."""
    found = entry_points(group=OBJECTIVES, name=name)
    if not found:
        known = ", ".join(sorted(ep.name for ep in entry_points(group=OBJECTIVES))) or "none"
        raise ValueError(f"objective {name!r} is not installed (entry points of group {OBJECTIVES}: {known})")
    return next(iter(found)).load()


def stored_objective(run_dir: Path, meta: dict) -> Classification | SelfSupervised | None:
    """The objective the run trains when the caller names none: its pre-training objective
    for a pre-training run, the registered objective its config.json names (LoRA adapters for
    a LoRA fine-tuning run: state.pt holds the adapted model), else None (classification); so
    one `vitkit train --resume` continues any run."""
    if PRETRAIN_KEY in meta:
        try:
            pre = PretrainConfig(**meta[PRETRAIN_KEY])
            pre.validate()
        except (TypeError, ValueError) as e:
            raise ValueError(f"{run_dir}/config.json: bad {PRETRAIN_KEY!r} entry ({e})") from None
        return SelfSupervised(pre)
    name = objective_name(meta)
    if name is None:
        return None
    try:
        return objective_factory(name)(meta)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{run_dir}/config.json: {e}") from None


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
