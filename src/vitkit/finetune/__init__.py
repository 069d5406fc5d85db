"""Fine-tuning as in the paper (Section 3.2, Appendix B.1.1): take a pre-trained model, drop
its pre-logits layer, attach a zero-initialized head for the new classes, interpolate the
position embeddings to the new resolution, and train with SGD (momentum 0.9, no weight
decay), gradient clipping at 1, warmup then cosine decay.

Three modes share that start: "full" trains every weight; "linear" trains the head alone on
features of the frozen backbone computed once (finetune/linear.py); "lora" trains low-rank
adapters and the head, and publishes them merged into plain weights (finetune/lora.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from ..data.augment import AugmentConfig
from ..data.pipeline import DataConfig, require_labels
from ..loading import LoadOptions, open_model
from ..plan import for_source, plan_input
from ..sizes import hw
from ..training import ModelSpec, OptimConfig, RunConfig, TrainConfig, fit
from ..training.resume import OBJECTIVE_KEY
from ..training.trainer import RunResult
from .linear import LinearOptions, linear_finetune
from .lora import LoraClassification, LoraOptions

__all__ = ["FINETUNE_OPTIM", "MODES", "LinearOptions", "LoraOptions", "finetune"]

Mode = Literal["full", "linear", "lora"]
MODES = ("full", "linear", "lora")

FINETUNE_OPTIM = OptimConfig(name="sgd", lr=0.01, weight_decay=0.0, momentum=0.9, warmup=0.1,
                             schedule="cosine", clip_grad=1.0)


def finetune(weights: str | Path, data: DataConfig, image_size: int | tuple[int, int] | None = None,
             optim: OptimConfig | None = None, augment: AugmentConfig | None = None,
             run: RunConfig | None = None, linear_probe: bool = False,
             resize_mode: str = "bicubic", options: LoadOptions | None = None, mode: Mode = "full",
             views: int = 1, linear: LinearOptions | None = None, lora: LoraOptions | None = None,
             on_step=None) -> RunResult:
    """Fine-tune `weights` (anything vitkit.open_model opens) on `data`; returns the run result.

    The new data is normalized as the source model's inputs were (its stored mean and std,
    else 0.5) unless data.mean is set. `mode` full, linear (`views` passes over the training
    images, `linear` for the head's training) or lora (`lora` for the adapters);
    linear_probe=True is mode="linear". Full and lora runs continue with
    vitkit.training.fit(None, resume=RUN_DIR); on_step is called as on_step(trainer) after
    every optimizer step of those.
    """
    mode = "linear" if linear_probe else mode
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    linear, lora = linear or LinearOptions(), lora or LoraOptions()
    linear.validate()
    lora.validate()
    if mode == "linear" and (isinstance(views, bool) or not isinstance(views, int) or views < 1):
        raise ValueError(f"--views {views}: must be 1 or more")
    optim = replace(optim or FINETUNE_OPTIM, train_only="all")
    run = run or RunConfig(out="runs/finetune", epochs=10)
    augment = augment or AugmentConfig()
    for section in (data, optim, augment, run):  # before anything is read
        section.validate()
    if mode == "lora" and run.strategy == "fsdp":
        raise ValueError("--mode lora: not available with --run.strategy fsdp (use ddp)")
    if image_size is not None and min(hw(image_size)) < 1:
        raise ValueError(f"--image_size {image_size}: must be 1 or more pixels")
    source = open_model(weights, options)  # channels, resolution and normalization of the source
    c = source.model.config
    # the run stores the source's size, channels, normalization, patch and stem, so that it (and
    # a resumed run) plans its input as the source reads images
    data, geo = for_source(data, c, source.spec.mean, source.spec.std, image_size)
    geometry = ModelSpec(patch_size=geo.patch_size, stem=geo.stem, stem_stride=geo.stem_stride)
    plan = plan_input(data, augment, geometry, from_scratch=False)  # the one plan: data read once, as it says
    augment = replace(augment, crop=plan.augment.crop)  # stored settled: a resumed run plans the same
    survey = plan.survey
    require_labels(survey.classes, str(data.path or data.dataset), "fine-tuning")
    if mode != "full" and survey.multilabel:
        raise ValueError(f"--mode {mode}: multi-label data (multi-hot labels) fine-tune with --mode full, "
                         "which trains the multilabel objective")
    classes = survey.classes
    size = plan.image_size
    model = open_model(weights, options, image_size=size, num_classes=len(classes),
                       resize_mode=resize_mode).model
    if model.config.representation_size:  # the paper removes the whole pre-training head
        model.drop_pre_logits()
    model.reset_classifier(len(classes))
    print(f"fine-tuning {weights}: {c.image_hw[0]}x{c.image_hw[1]} -> {size[0]}x{size[1]}, "
          f"{c.num_classes} -> {len(classes)} classes, new zero-initialized head"
          + {"full": "", "linear": ", backbone frozen (linear probe on cached features)",
             "lora": f", LoRA rank {lora.rank} on {', '.join(lora.targets)}"}[mode])
    cfg = TrainConfig(data=data, model=geometry, optim=optim, augment=augment, run=run)
    meta = {"finetuned_from": str(weights), "finetune": {"mode": mode}}
    if mode == "linear":
        meta["finetune"].update(views=views, linear=vars(linear))
        return linear_finetune(model, cfg, views, linear, meta, plan)
    if mode == "full":
        return fit(cfg, model=model.train(), extra_meta=meta, on_step=on_step, plan=plan)
    meta["finetune"].update(lora=vars(lora))  # what a resumed run rebuilds its adapters from
    meta[OBJECTIVE_KEY] = "lora"  # the registered objective (lora.from_meta) a resumed run trains
    return fit(cfg, model=model.train(), extra_meta=meta, objective=LoraClassification(lora),
               on_step=on_step, plan=plan)
