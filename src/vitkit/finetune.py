"""Fine-tuning as in the paper (Section 3.2, Appendix B.1.1): take a pre-trained model, drop
its pre-logits layer, attach a zero-initialized head for the new classes, interpolate the
position embeddings to the new resolution, and train with SGD (momentum 0.9, no weight
decay), gradient clipping at 1, warmup then cosine decay. A linear probe trains the new head
alone on a frozen backbone."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .data.augment import AugmentConfig
from .data.pipeline import DataConfig, load_data
from .training import OptimConfig, RunConfig, TrainConfig, fit
from .training.trainer import RunResult

FINETUNE_OPTIM = OptimConfig(name="sgd", lr=0.01, weight_decay=0.0, momentum=0.9, warmup=0.1,
                             schedule="cosine", clip_grad=1.0)


def _source_normalization(weights: Path) -> tuple[list[float], list[float]] | None:
    """The normalization a vitkit run was trained with, which the new data must keep."""
    cfg = weights / "config.json" if weights.is_dir() else None
    if cfg is not None and cfg.is_file():
        meta = json.loads(cfg.read_text())
        if "data" in meta and "model" in meta:
            return meta["data"]["mean"], meta["data"]["std"]
    return None


def finetune(weights: str | Path, data: DataConfig, image_size: int | None = None,
             optim: OptimConfig | None = None, augment: AugmentConfig | None = None,
             run: RunConfig | None = None, linear_probe: bool = False,
             resize_mode: str = "bicubic") -> RunResult:
    """Fine-tune `weights` (any format vitkit.load reads) on `data`; returns the run result."""
    from .loading import load

    weights = Path(weights)
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: no such file or directory")
    optim = replace(optim or FINETUNE_OPTIM, train_only="head" if linear_probe else "all")
    run = run or RunConfig(out="runs/finetune", epochs=10)
    augment = augment or AugmentConfig()
    probe_model = load(weights)  # to learn channels, resolution and normalization
    c = probe_model.config
    data = replace(data, channels=data.channels or c.num_channels,
                   image_size=image_size or data.image_size or c.image_hw[0])
    norm = _source_normalization(weights)
    if norm and data.mean is None:
        data = replace(data, mean=norm[0], std=norm[1])
    elif data.mean is None:
        data = replace(data, mean=[0.5] * data.channels, std=[0.5] * data.channels)
    classes = load_data(data).classes
    size = (data.image_size, data.image_size)
    model = load(weights, image_size=size, num_classes=len(classes), resize_mode=resize_mode)
    if model.config.representation_size:  # the paper removes the whole pre-training head
        model.drop_pre_logits()
    model.reset_classifier(len(classes))
    print(f"fine-tuning {weights}: {c.image_hw[0]}x{c.image_hw[1]} -> {size[0]}x{size[1]}, "
          f"{c.num_classes} -> {len(classes)} classes, new zero-initialized head"
          + (", backbone frozen (linear probe)" if linear_probe else ""))
    cfg = TrainConfig(data=data, optim=optim, augment=augment, run=run)
    return fit(cfg, model=model.train(), extra_meta={"finetuned_from": str(weights)})
