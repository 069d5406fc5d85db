"""The commands that write a run: train, pretrain, finetune, distill."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..data.augment import AugmentConfig
from ..data.pipeline import DataConfig
from ..distill import DistillOptions
from ..finetune.linear import LinearOptions
from ..finetune.lora import LoraOptions
from ..loading import LoadOptions
from ..training.config import ModelSpec, OptimConfig, RunConfig
from ..training.objectives import PretrainConfig
from .support import is_main_process, print_lines


def train(data: DataConfig = DataConfig(), model: ModelSpec = ModelSpec(), optim: OptimConfig = OptimConfig(),
          augment: AugmentConfig = AugmentConfig(), run: RunConfig = RunConfig(),
          resume: str | None = None) -> None:
    """Train a ViT; with no arguments, on the built-in digits set (recipes: configs/*.yaml).

    Reads the data (--data.*), writes a run directory (--run.out): model.safetensors, config.json,
    train.yaml, state.pt, metrics.csv, curves.png. Example: vitkit train --config configs/digits.yaml

    Args:
        data: where the images come from and how they are shaped.
        model: the architecture (a variant such as "Ti/16", or explicit sizes).
        optim: optimizer, schedule, clipping, accumulation, EMA.
        augment: augmentation and label smoothing.
        run: epochs, batch size, output directory, seed, precision, device, time budget.
        resume: a run directory (any: supervised, fine-tuning, pre-training) to continue exactly
            where it stopped (its stored config and objective are used).
    """
    from ..checkpoint import read_meta
    from ..training import TrainConfig, fit
    from ..training.resume import PRETRAIN_KEY, stored_config

    meta = read_meta(Path(resume)) if resume else {}
    if PRETRAIN_KEY in meta:
        return pretrain(resume=resume)  # continued the same way, with pre-training's closing lines
    if "distill" in meta:  # the teacher's views are computed again
        from ..distill import distill as run_distill

        return _after_training(run_distill(None, resume=resume), stored_config(Path(resume)))
    cfg = stored_config(Path(resume)) if resume else TrainConfig(data=data, model=model, optim=optim,
                                                                   augment=augment, run=run)
    _after_training(fit(None if resume else cfg, resume=resume), cfg, suggest_finetune=True)


def pretrain(pretrain: PretrainConfig = PretrainConfig(), data: DataConfig = DataConfig(),
             model: ModelSpec = ModelSpec(),
             optim: OptimConfig = OptimConfig(lr=1.5e-3, weight_decay=0.05, betas=(0.9, 0.95)),
             augment: AugmentConfig = AugmentConfig(), run: RunConfig = RunConfig(out="runs/pretrain"),
             resume: str | None = None) -> None:
    """Pre-train an encoder without labels: MAE (--pretrain.objective mae, 75% of patches
    masked, the encoder sees the rest) or the paper's masked patch prediction (mpp).

    Reads any data `vitkit train` reads (labels are ignored) and writes a run directory
    whose model.safetensors is the encoder alone, for finetune, probe, embed and export.

    Example: vitkit pretrain --data.dataset folder --data.path photos/ --run.time_budget 10

    Args:
        pretrain: the objective, its mask ratio and (MAE) decoder size.
        data: where the images come from and how they are shaped.
        model: the encoder (a variant such as "S/16", or explicit sizes; MAE needs --model.stem patch).
        optim: optimizer and schedule (default: AdamW with MAE's betas 0.9, 0.95).
        augment: augmentation (mixup and cutmix are refused: there are no labels to mix).
        run: epochs, batch size, output directory, seed, precision, device, time budget.
        resume: a pre-training run directory to continue exactly where it stopped.
    """
    from ..pretrain import closing_lines
    from ..pretrain import pretrain as run_pretrain
    from ..training import TrainConfig

    cfg = None if resume else TrainConfig(data=data, model=model, optim=optim, augment=augment, run=run)
    result = run_pretrain(cfg, pretrain, resume=resume)
    if is_main_process() and result.status != "done":
        _close(result, closing_lines(result, "resumed" if resume else pretrain.objective))


def _after_training(result, cfg, suggest_finetune: bool = False) -> None:
    """The closing lines of a training command (a finished run resumed has said them already)."""
    from ..training.records import closing_lines

    if is_main_process() and result.status != "done":
        _close(result, closing_lines(result, cfg, suggest_finetune))


def _close(result, lines: list[str]) -> None:
    """Print a run's closing lines; an interrupted run exits with status 130 after them."""
    print_lines(lines)
    if result.status == "interrupted":
        raise SystemExit(130)


def finetune(weights: str, data: DataConfig = DataConfig(), image_size: int | tuple[int, int] | None = None,
             optim: OptimConfig = OptimConfig(name="sgd", lr=0.01, weight_decay=0.0, warmup=0.1),
             augment: AugmentConfig = AugmentConfig(),
             run: RunConfig = RunConfig(out="runs/finetune", epochs=10),
             mode: Literal["full", "linear", "lora"] = "full", views: int = 1,
             linear: LinearOptions = LinearOptions(), lora: LoraOptions = LoraOptions(),
             linear_probe: bool = False, resize_mode: Literal["bicubic", "bilinear", "jax"] = "bicubic",
             load: LoadOptions = LoadOptions()) -> None:
    """Fine-tune pre-trained weights (any format vitkit reads) on new data, as in the paper:
    a new zero-initialized head, pre-logits dropped, position embeddings interpolated to
    --image_size, SGD with momentum 0.9 and no weight decay, clipping at 1, warmup + cosine.

    Reads WEIGHTS and the data; writes a run directory (--run.out) whose model folder every
    command opens. Example: vitkit finetune google/vit-base-patch16-224 --data.dataset folder
    --data.path photos/ --mode lora

    Args:
        weights: a run or model folder, another library's checkpoint or folder, or a Hub id
            (downloaded unless cached).
        data: the data to fine-tune on.
        image_size: the new resolution, one side or [h, w] (default: the data's, else the model's).
        optim: optimizer and schedule for full and lora (default: the paper's fine-tuning recipe).
        augment: augmentation and label smoothing (linear: for views 2..K).
        run: epochs, batch size, output directory, precision, device.
        mode: full (every weight), linear (the head on features of the frozen backbone,
            computed once) or lora (low-rank adapters and the head, merged when saved).
        views: linear: passes over the training images (the first plain, the rest augmented).
        linear: linear: how the head is trained on the cached features.
        lora: lora: rank, alpha, dropout and which linear layers get adapters.
        linear_probe: the same as --mode linear.
        resize_mode: position-embedding interpolation: bicubic, bilinear or jax.
        load: what the checkpoint may not record (heads, classes, normalization).
    """
    from ..finetune import finetune as run_finetune
    from ..training import TrainConfig

    result = run_finetune(weights, data, image_size, optim, augment, run, linear_probe, resize_mode, load,
                          mode=mode, views=views, linear=linear, lora=lora)
    _after_training(result, TrainConfig(data=data, optim=optim, augment=augment, run=run))


def distill(
    teacher: str,
    data: DataConfig = DataConfig(),  # noqa: B008 (read-only defaults)
    model: ModelSpec = ModelSpec(),  # noqa: B008
    distill: DistillOptions = DistillOptions(),  # noqa: B008
    optim: OptimConfig = OptimConfig(),  # noqa: B008
    augment: AugmentConfig = AugmentConfig(),  # noqa: B008
    run: RunConfig = RunConfig(out="runs/distill"),  # noqa: B008
    load: LoadOptions = LoadOptions(),  # noqa: B008
) -> None:
    """Distill a teacher into a small, fast student (DeiT's hard, soft or token distillation).

    The teacher labels --distill.views augmented views of every training image once; the
    student (default: the model vitkit train builds for the data; --distill.init teacher: the
    teacher's first layers at a lower resolution) trains on them. Writes a run
    directory (--run.out) whose model folder every command opens. Example: vitkit distill
    runs/finetune --data.dataset folder --data.path photos/ --distill.loss token

    Args:
        teacher: any model vitkit opens, fine-tuned on the same classes (a run or model folder,
            another library's checkpoint, a Hub id, an exported .onnx file).
        data: the data to distill on.
        model: the student's architecture (unset: vitkit train's default for the data).
        distill: the loss (soft, hard, token or labels), its weight and temperature, the views,
            where the student starts (init: scratch or teacher).
        optim: the student's optimizer and schedule.
        augment: augmentation of the views (teacher and student see the same view).
        run: epochs (default: vitkit train's image passes spread over the views), output
            directory, precision, device, time budget.
        load: what the teacher's files may not record (classes, normalization).

    A stopped run continues with vitkit train --resume RUN_DIR.
    """
    from ..distill import distill as run_distill
    from ..training import TrainConfig

    result = run_distill(teacher, data, model, distill, optim, augment, run, load)
    _after_training(result, TrainConfig(data=data, optim=optim, augment=augment, run=run))


