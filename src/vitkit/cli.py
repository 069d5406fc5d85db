"""The `vitkit` command: a thin layer over the library; every command is a plain function."""

from __future__ import annotations

import sys
from typing import Literal

from .data.augment import AugmentConfig
from .data.pipeline import DataConfig
from .training.config import ModelSpec, OptimConfig, RunConfig


def info(image_size: int = 224) -> None:
    """Print the named variants: layers, width, MLP size, heads, parameters and GFLOPs.

    Args:
        image_size: square input resolution used for the parameter and FLOP counts.
    """
    from .info import format_table, variant_rows

    print(f"ViT variants (1000 classes, {image_size}x{image_size}; GFLOPs = 2 x multiply-adds "
          "of one forward pass, counted analytically)")
    print(format_table(variant_rows(image_size), image_size))


def bench(
    device: Literal["cpu", "cuda"] = "cpu",
    repeats: int = 5,
    only: Literal["infer", "train"] | None = None,
    memory: bool = True,
    json: str | None = "speed.json",
) -> None:
    """Time vitkit, timm and Hugging Face transformers on the same ViTs, interleaved, in one run.

    Args:
        device: where to run.
        repeats: timed repeats per library and workload (the median is reported).
        only: just the inference or just the training workloads.
        memory: also measure training peak memory (the most tensor memory one step holds).
        json: where to write the results as JSON.
    """
    from pathlib import Path

    from .bench import run

    run(device, repeats, only, memory, Path(json) if json else None)


def train(
    data: DataConfig = DataConfig(),  # noqa: B008 (read-only defaults)
    model: ModelSpec = ModelSpec(),  # noqa: B008 (read-only defaults)
    optim: OptimConfig = OptimConfig(),  # noqa: B008 (read-only defaults)
    augment: AugmentConfig = AugmentConfig(),  # noqa: B008 (read-only defaults)
    run: RunConfig = RunConfig(),  # noqa: B008 (read-only defaults)
    resume: str | None = None,
) -> None:
    """Train a ViT; with no arguments, on the built-in digits set (recipes: configs/*.yaml).

    Args:
        data: where the images come from and how they are shaped.
        model: the architecture (a variant such as "Ti/16", or explicit sizes).
        optim: optimizer, schedule, clipping, accumulation, EMA.
        augment: augmentation and label smoothing.
        run: epochs, batch size, output directory, seed, precision, device, time budget.
        resume: a run directory to continue exactly where it stopped (its stored config is used).
    """
    from .training import TrainConfig, fit

    cfg = TrainConfig(data=data, model=model, optim=optim, augment=augment, run=run)
    result = fit(cfg, resume=resume)
    if result.status == "interrupted":
        raise SystemExit(130)


def finetune(
    weights: str,
    data: DataConfig = DataConfig(),  # noqa: B008 (read-only defaults)
    image_size: int | None = None,
    optim: OptimConfig = OptimConfig(name="sgd", lr=0.01, weight_decay=0.0, warmup=0.1),  # noqa: B008
    augment: AugmentConfig = AugmentConfig(),  # noqa: B008
    run: RunConfig = RunConfig(out="runs/finetune", epochs=10),  # noqa: B008
    linear_probe: bool = False,
    resize_mode: str = "bicubic",
) -> None:
    """Fine-tune pre-trained weights (any format vitkit reads) on new data, as in the paper:
    a new zero-initialized head, pre-logits dropped, position embeddings interpolated to
    --image_size, SGD with momentum 0.9 and no weight decay, clipping at 1, warmup + cosine.

    Args:
        weights: a run directory, a vitkit model directory or another library's checkpoint.
        data: the data to fine-tune on.
        image_size: the new square resolution (default: the data's, else the model's).
        optim: optimizer and schedule (default: the paper's fine-tuning recipe).
        augment: augmentation and label smoothing.
        run: epochs, batch size, output directory, precision, device.
        linear_probe: train only the new head on a frozen backbone.
        resize_mode: position-embedding interpolation: bicubic, bilinear or jax.
    """
    from .finetune import finetune as run_finetune

    result = run_finetune(weights, data, image_size, optim, augment, run, linear_probe, resize_mode)
    if result.status == "interrupted":
        raise SystemExit(130)


def evaluate(
    weights: str,
    data: DataConfig | None = None,
    out: str | None = None,
    batch_size: int = 500,
    precision: str = "auto",
) -> None:
    """Top-1 / top-5 and per-class accuracy, and a confusion matrix (PNG and CSV).

    Args:
        weights: a run directory, a vitkit model directory or another library's checkpoint.
        data: the data to evaluate on; default: the validation split the run was trained with.
        out: where to write confusion.png / confusion.csv / eval.json (default: the run directory).
        batch_size: images per forward pass.
        precision: auto (bf16 where the hardware has native bf16), fp32 or bf16.
    """
    import json
    from pathlib import Path

    from .data.pipeline import load_data
    from .evaluation import evaluate_model, for_inference, inference_precision, write_confusion
    from .predict import load_for_inference

    loaded = load_for_inference(weights)
    if data is None:
        stored = Path(weights) / "config.json"
        meta = json.loads(stored.read_text()) if stored.is_file() else {}
        if "train" not in meta:
            raise ValueError(f"{weights}: no stored training data; pass --data.dataset / --data.path")
        data = DataConfig(**{**meta["train"]["data"], "per_class": None})
    spec = loaded.spec
    data.image_size = spec.image_size[0] if spec.image_size[0] == spec.image_size[1] else data.image_size
    data.channels = spec.channels
    d = load_data(data)
    if d.classes != loaded.classes:
        raise ValueError(f"the model's classes {loaded.classes[:10]} differ from the data's {d.classes[:10]}")
    precision = inference_precision(precision, "cpu")
    model = for_inference(loaded.model, precision)
    res = evaluate_model(model, d.val, spec, loaded.classes, batch_size, "cpu", precision, data.workers)
    out_dir = Path(out) if out else (Path(weights) if Path(weights).is_dir() else Path("."))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_confusion(res, out_dir / "confusion.csv", out_dir / "confusion.png")
    summary = {"images": res.count, "top1": res.top1, "top5": res.top5, "loss": res.loss,
               "per_class": res.per_class}
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{res.count} images ({precision}): top-1 {res.top1:.2%}  top-5 {res.top5:.2%}  "
          f"loss {res.loss:.4f}")
    width = max(len(c) for c in res.classes)
    for c, acc in res.per_class.items():
        print(f"  {c:<{width}}  {acc:.2%}")
    print(f"wrote {out_dir}/confusion.png, confusion.csv, eval.json")


def predict(weights: str, images: list[str], topk: int = 5, json: bool = False,
            precision: str = "auto") -> None:
    """Top-k classes with probabilities for image files or directories of images.

    Args:
        weights: a run directory, a vitkit model directory or another library's checkpoint.
        images: image files and/or directories.
        topk: how many classes to show per image.
        json: print JSON instead of a table.
        precision: auto (bf16 where the hardware has native bf16), fp32 or bf16.
    """
    import json as _json

    from .evaluation import for_inference, inference_precision
    from .predict import list_images, load_for_inference, predict_files

    loaded = load_for_inference(weights)
    precision = inference_precision(precision, next(loaded.model.parameters()).device)
    for_inference(loaded.model, precision)
    results = predict_files(loaded, list_images(images), topk, precision=precision)
    if json:
        print(_json.dumps(results, indent=2))
        return
    for r in results:
        if "error" in r:
            print(f"{r['file']}: {r['error']}")
            continue
        tops = "  ".join(f"{t['class']} {t['probability']:.1%}" for t in r["top"])
        print(f"{r['file']}: {tops}")


def visualize(
    path: str,
    images: list[str] | None = None,
    out: str = "figures",
    data: str | None = None,
    num_samples: int = 16,
    max_images: int = 4,
    seed: int = 0,
    device: str = "cpu",
) -> None:
    """Attention maps, attention rollout and the paper's Figure 6 and 7 plots, plus report.html.

    Usage: vitkit visualize RUN_OR_WEIGHTS [IMAGES ...] --out DIR (options after the files).

    Args:
        path: a training run directory or a model directory (config.json + model.safetensors).
        images: image files to look at; without them, a sample of --data, else random noise.
        out: directory for the PNG figures and report.html.
        data: an image folder to sample from when no images are given, or "digits" for the
            built-in digits set.
        num_samples: how many images to sample from --data (or of noise) for attention distance.
        max_images: how many images get attention and rollout figures.
        seed: seed for sampling images and for noise.
        device: where the model runs (cpu, cuda, ...).
    """
    from .visualize import visualize_path

    result = visualize_path(path, out, images, data, num_samples, max_images, seed, device)
    for p in result.figures:
        print(f"wrote {p}")
    for title, reason in result.skipped.items():
        print(f"skipped {title}: {reason}")
    print(f"wrote {result.report}")


def convert(
    src: str,
    out: str,
    to: Literal["vitkit", "timm", "hf", "npz"] = "vitkit",
    naming: Literal["vit_jax", "big_vision"] = "vit_jax",
    image_size: int | None = None,
    num_classes: int | None = None,
    resize_mode: Literal["bicubic", "bilinear", "jax"] = "bicubic",
    strict: bool = True,
    num_heads: int | None = None,
    pool: Literal["cls", "mean"] | None = None,
) -> None:
    """Convert a ViT checkpoint (official .npz, timm, Hugging Face, torchvision, vitkit) to another format.

    Usage: vitkit convert SRC OUT --to timm|hf|npz|vitkit. Prints what was found and done.

    Args:
        src: the checkpoint: a file (.npz, .pth, .bin, .safetensors) or a model directory.
        out: where to write: a directory for vitkit and hf, a file for timm (.pth or
            .safetensors) and npz.
        to: output format.
        naming: parameter names of an npz output: vit_jax (the paper's code) or big_vision.
        image_size: resize the position embeddings for this input size (2D interpolation).
        num_classes: replace the head by a zero-initialized one with this many classes.
        resize_mode: interpolation of the position embeddings: bicubic, bilinear, or jax
            (scipy zoom order 1, as the official code).
        strict: refuse missing, unexpected or mis-shaped keys; false: convert what fits.
        num_heads: attention heads, for timm and torchvision files of a width that is not
            a named variant's (those files do not record it).
        pool: cls or mean, for timm files that pool by global average.
    """
    from .loading import convert as convert_checkpoint

    overrides = {k: v for k, v in dict(num_heads=num_heads, pool=pool).items() if v is not None}
    path, report = convert_checkpoint(src, out, to=to, naming=naming, image_size=image_size,
                                      num_classes=num_classes, resize_mode=resize_mode, strict=strict,
                                      **overrides)
    print(report)
    print(f"wrote {path} ({to})")


def _run_with_file_list(name: str, argv: list[str]) -> None:
    """Run a command whose required parameters are positional and whose list parameter
    (FILE_LISTS[name]) takes all further positional arguments, e.g. `visualize RUN a.png b.png`;
    jsonargparse cannot derive such a variable-length positional from a signature."""
    import inspect
    import re

    from jsonargparse import ArgumentParser

    func, files = COMMANDS[name], FILE_LISTS[name]
    doc = inspect.getdoc(func) or ""

    def arg_help(arg: str) -> str:
        m = re.search(rf"^\s*{arg}: (.*)$", doc, re.MULTILINE)
        return m.group(1) if m else ""

    params = inspect.signature(func).parameters
    required = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p != files]
    parser = ArgumentParser(prog=f"vitkit {name}", description=doc.split("\n\n")[0])
    for p in required:
        parser.add_argument(p, help=arg_help(p))
    parser.add_argument(files, nargs="*", default=[], help=arg_help(files))
    parser.add_function_arguments(func, skip=set(required) | {files})
    func(**parser.parse_args(argv).as_dict())


COMMANDS = {"info": info, "train": train, "finetune": finetune, "evaluate": evaluate, "predict": predict,
            "visualize": visualize, "convert": convert, "bench": bench}
# Commands whose trailing positional arguments fill a list parameter: command -> parameter.
FILE_LISTS = {"visualize": "images", "predict": "images"}


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in FILE_LISTS:
            _run_with_file_list(argv[0], argv[1:])
        else:
            CLI(COMMANDS, args=argv)
    except (ValueError, FileNotFoundError, PermissionError, KeyError) as e:
        print(f"vitkit: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
