"""vitkit's model folder: the one layout every vitkit model and training run is stored in.

A model folder holds

- ``config.json``: ``{"model": ViTConfig fields, "classes": [names], "data": input spec
  (image_size, channels, mean, std, ...)}``; a training run adds ``"train"`` (its resolved
  TrainConfig) and a fine-tuned model ``"finetuned_from"``; a multi-label model (one sigmoid
  per tag, vitkit.multilabel) adds ``"multilabel": {"threshold": t, "chosen_by": ...}``, the
  probability at or over which a tag is predicted, chosen on the validation split; a run
  trained on images given in memory adds ``"data_source": "in memory"``;
- ``model.safetensors``: the weights alone.

A training run adds ``state.pt`` (optimizer, EMA, RNG states, position in the schedule),
``train.yaml``, ``metrics.csv`` and ``curves.png``. The names are defined here only; every file
is written atomically (vitkit.files). This module reads and writes tensors and configs: it
never builds a model, so the model can use it without an import cycle.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import ViTConfig
from .files import atomic_save_tensors, atomic_write_json, read_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "state.pt"
RECIPE_NAME = "train.yaml"
METRICS_NAME = "metrics.csv"
CURVES_NAME = "curves.png"
SHARDED_NAME = "state.dcp"  # the DCP checkpoint directory of an FSDP run
# What marks a folder as a model or a run (vitkit's, Hugging Face's or timm's own files).
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME, STATE_NAME, SHARDED_NAME, RECIPE_NAME, "pytorch_model.bin")


def read_meta(directory: str | Path) -> dict:
    """config.json of a model folder, checked: it exists, is JSON and has a valid model section."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a vitkit model folder)")
    meta = read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise ValueError(f"{path}: no 'model' section; not a vitkit config")
    try:
        ViTConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad model config ({e})") from None
    return meta


def read_config(directory: str | Path) -> ViTConfig:
    return ViTConfig.from_dict(read_meta(directory)["model"])


def read_weights(directory: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def write_weights(directory: str | Path, model: torch.nn.Module) -> Path:
    return atomic_save_tensors(Path(directory) / WEIGHTS_NAME, model.state_dict())


def write_meta(directory: str | Path, config: ViTConfig, extra: dict | None = None) -> Path:
    return atomic_write_json(Path(directory) / CONFIG_NAME, {"model": config.to_dict(), **(extra or {})})


def save_pretrained(model: torch.nn.Module, directory: str | Path, extra: dict | None = None, *,
                    classes: list[str] | None = None, data: dict | None = None) -> Path:
    """Write a model folder that every vitkit command opens: the weights, then config.json with
    `extra`, `classes` and `data` (the input spec: image_size, channels, mean, std), so that a
    loader prepares inputs the way the model was trained."""
    extra = {**(extra or {}), **{k: v for k, v in dict(classes=classes, data=data).items() if v is not None}}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_weights(directory, model)
    write_meta(directory, model.config, extra)
    return directory


def load_state_dict_checked(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with one clear error naming missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else ""))
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:5]))
    if problems:
        raise ValueError(f"{source}: weights do not fit the model: " + " | ".join(problems))
    model.load_state_dict(sd)


def holds_model(directory: str | Path) -> bool:
    """Whether a folder holds a model or a training run (its own files, not just any file)."""
    d = Path(directory)
    return d.is_dir() and any((d / n).exists() for n in MODEL_FILES)


def _same_or_inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents or a in b.parents


def check_output_file(path: str | Path, option: str | None = "--out", reading: tuple = ()) -> Path:
    """Where a command will write one file, checked before any work: not a directory, not a
    file of a model folder or run, not the input itself. `option` names it in the message
    (None for a positional argument)."""
    p = Path(path)
    named = f"{option} {p}" if option else str(p)
    if p.is_dir():
        raise ValueError(f"{named}: is a directory; name a file to write")
    for src in reading:
        if Path(src).exists() and _same_or_inside(p, Path(src)):
            raise ValueError(f"{named}: is the input {src} (or inside it); write somewhere else")
    if p.exists() and p.name in MODEL_FILES and holds_model(p.parent):
        raise ValueError(f"{named}: a file of the model folder {p.parent}; write somewhere else")
    return p


def check_output_folder(path: str | Path, overwrite: bool = False, option: str | None = "--out",
                        reading: tuple = ()) -> Path:
    """Where a command will write a folder, checked before any work: never the input (or a
    folder inside it or around it); a folder that is not empty only with overwrite."""
    p = Path(path)
    named = f"{option} {p}" if option else str(p)
    for src in reading:
        if Path(src).exists() and _same_or_inside(p, Path(src)):
            raise ValueError(f"{named}: is the input {src} (or inside it, or around it); "
                             "write into a new folder")
    if p.exists() and not p.is_dir():
        raise ValueError(f"{named}: exists and is not a folder")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        what = ("a training run" if (p / STATE_NAME).exists() or (p / SHARDED_NAME).exists()
                else "a model folder" if holds_model(p) else "files")
        raise ValueError(f"{named}: already holds {what}; choose another folder, or pass "
                         "--overwrite true to replace it")
    return p
