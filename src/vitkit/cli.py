"""The `vitkit` command: a thin layer over the library; every command is a plain function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from .cli_support import is_main_process, json_mode, print_json, print_lines
from .cli_support import run as run_commands
from .data.augment import AugmentConfig
from .data.pipeline import DataConfig
from .distill import DistillOptions
from .features import FeatureOptions
from .finetune.linear import LinearOptions
from .finetune.lora import LoraOptions
from .loading import LoadOptions
from .training.config import ModelSpec, OptimConfig, RunConfig
from .training.objectives import PretrainConfig


def info(models: list[str] | None = None, image_size: int = 224, json: bool = False,
         load: LoadOptions = LoadOptions()) -> None:
    """Print the named variants: layers, width, MLP size, heads, parameters and GFLOPs; or, given
    models, what each is and how its images will be prepared (size, mean, std, crop) and why.

    Usage: vitkit info [MODEL ...] [--load.preprocess NAME]. Reads the models given, writes nothing.
    Example: vitkit info --image_size 448; vitkit info deit-tiny.safetensors --load.preprocess deit

    Args:
        models: run or model folders, checkpoint files, .onnx files or Hub ids to describe.
        image_size: square input resolution used for the variants' parameter and FLOP counts.
        json: print the rows (or the models) as JSON (alone on stdout) instead of a table.
        load: what the checkpoints may not record (heads, classes, normalization, --load.preprocess).
    """
    from .info import describe, format_model, format_table, variant_rows
    from .loading import open_model

    with json_mode(json):
        found = [describe(open_model(m, load)) for m in models or []]
    rows = [] if models else variant_rows(image_size)
    if json:
        return print_json({"models": found} if models else {"image_size": image_size, "variants": rows})
    print("\n".join(format_model(d) for d in found) if models else
          f"ViT variants (1000 classes, {image_size}x{image_size}; GFLOPs = 2 x multiply-adds of one forward "
          f"pass, counted analytically)\n{format_table(rows, image_size)}")


def bench(device: Literal["cpu", "cuda"] = "cpu", repeats: int = 5,
          only: Literal["infer", "train"] | None = None, memory: bool = True, out: str | None = "speed.json",
          compiled: bool = False, json: bool = False) -> None:
    """Time vitkit, timm and Hugging Face transformers on the same ViTs, interleaved, in one run.

    Prints a table per workload and writes the results to --out. Example: vitkit bench --only infer

    Args:
        device: where to run.
        repeats: timed repeats per library and workload (the median is reported).
        only: just the inference or just the training workloads.
        memory: also measure training peak memory (the most tensor memory one step holds).
        out: where to write the results as JSON (none: nowhere).
        compiled: also time vitkit under torch.compile (inductor; compiling takes minutes on a CPU).
        json: print the results as JSON alone on stdout (the tables go to stderr).
    """
    from .bench import run

    with json_mode(json):
        result = run(device, repeats, only, memory, Path(out) if out else None, compiled=compiled)
    if json:
        print_json(result)


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
    from .checkpoint import read_meta
    from .training import TrainConfig, fit
    from .training.resume import PRETRAIN_KEY, stored_config

    meta = read_meta(Path(resume)) if resume else {}
    if PRETRAIN_KEY in meta:
        return pretrain(resume=resume)  # continued the same way, with pre-training's closing lines
    if "distill" in meta:  # the teacher's views are computed again
        from .distill import distill as run_distill

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
    from .pretrain import closing_lines
    from .pretrain import pretrain as run_pretrain
    from .training import TrainConfig

    cfg = None if resume else TrainConfig(data=data, model=model, optim=optim, augment=augment, run=run)
    result = run_pretrain(cfg, pretrain, resume=resume)
    if is_main_process() and result.status != "done":
        _close(result, closing_lines(result, "resumed" if resume else pretrain.objective))


def _after_training(result, cfg, suggest_finetune: bool = False) -> None:
    """The closing lines of a training command (a finished run resumed has said them already)."""
    from .training.records import closing_lines

    if is_main_process() and result.status != "done":
        _close(result, closing_lines(result, cfg, suggest_finetune))


def _close(result, lines: list[str]) -> None:
    """Print a run's closing lines; an interrupted run exits with status 130 after them."""
    print_lines(lines)
    if result.status == "interrupted":
        raise SystemExit(130)


def finetune(weights: str, data: DataConfig = DataConfig(), image_size: int | None = None,
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
        image_size: the new square resolution (default: the data's, else the model's).
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
    from .finetune import finetune as run_finetune
    from .training import TrainConfig

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
    student (default: the model vitkit train builds for the data) trains on them. Writes a run
    directory (--run.out) whose model folder every command opens. Example: vitkit distill
    runs/finetune --data.dataset folder --data.path photos/ --distill.loss token

    Args:
        teacher: any model vitkit opens, fine-tuned on the same classes (a run or model folder,
            another library's checkpoint, a Hub id, an exported .onnx file).
        data: the data to distill on.
        model: the student's architecture (unset: vitkit train's default for the data).
        distill: the loss (hard, soft, token or labels), its weight and temperature, the views.
        optim: the student's optimizer and schedule.
        augment: augmentation of the views (teacher and student see the same view).
        run: epochs (default: vitkit train's image passes spread over the views), output
            directory, precision, device, time budget.
        load: what the teacher's files may not record (classes, normalization).

    A stopped run continues with vitkit train --resume RUN_DIR.
    """
    from .distill import distill as run_distill
    from .training import TrainConfig

    result = run_distill(teacher, data, model, distill, optim, augment, run, load)
    _after_training(result, TrainConfig(data=data, optim=optim, augment=augment, run=run))


def evaluate(weights: str, data: DataConfig | None = None, out: str | None = None, batch_size: int = 500,
             precision: Literal["auto", "fp32", "bf16"] = "auto", load: LoadOptions = LoadOptions(),
             engine: Literal["auto", "torch", "onnx"] = "auto", json: bool = False) -> None:
    """Top-1 / top-5 and per-class accuracy, and a confusion matrix (PNG and CSV).

    Reads WEIGHTS and the data; prints the accuracies and writes confusion.png, confusion.csv
    and eval.json. A multi-label model gets mAP, micro and macro F1 at its stored threshold and
    per-tag AP instead (eval.json alone). Example: vitkit evaluate runs/digits --out eval/

    Args:
        weights: a run or model folder, another library's checkpoint or folder, an exported
            .onnx file, or a Hub id.
        data: the data to evaluate on, all of it (a folder: every image in it); default: the
            validation split the run was trained with.
        out: where to write confusion.png / confusion.csv / eval.json (default: the run directory).
        batch_size: images per forward pass.
        precision: auto (bf16 where the hardware has native bf16), fp32 or bf16.
        load: what the checkpoint may not record (heads, classes, normalization).
        engine: what runs fp32 inference on a CPU: auto (ONNX Runtime where it pays: a cached
            graph, or enough images to repay exporting one), torch, or onnx.
        json: print eval.json's summary alone on stdout instead of the table.
    """
    from .evaluation import evaluate_path, summary_lines

    with json_mode(json):
        done = evaluate_path(weights, data, out, batch_size, precision, load, engine=engine)
    print_json(done.to_json()) if json else print_lines(summary_lines(done))


def predict(weights: str, images: list[str], topk: int = 5, json: bool = False,
            precision: Literal["auto", "fp32", "bf16"] = "auto", load: LoadOptions = LoadOptions(),
            engine: Literal["auto", "torch", "onnx"] = "auto") -> None:
    """Top-k classes with probabilities for image files or directories of images.

    Prints one line per image (or JSON); unreadable files are named on stderr, and the command
    fails when none could be read. A multi-label model lists every tag whose sigmoid probability
    is at or over its stored threshold ("labels" in JSON). Example: vitkit predict runs/digits
    photo.png more/ --topk 3

    Args:
        weights: a run or model folder, another library's checkpoint or folder, an exported
            .onnx file, or a Hub id.
        images: image files and/or directories.
        topk: how many classes to show per image.
        json: print JSON (alone on stdout; unreadable files are named on stderr) instead of a table.
        precision: auto (bf16 where the hardware has native bf16), fp32 or bf16.
        load: what the checkpoint may not record (heads, classes, normalization).
        engine: what runs fp32 inference on a CPU: auto (ONNX Runtime where it pays: a cached
            graph, or enough images to repay exporting one), torch, or onnx.
    """
    from .predict import predict_paths, report_unreadable, result_lines

    with json_mode(json):
        results = predict_paths(weights, images, topk, precision, load, engine)
    print_json(results) if json else print_lines(result_lines(results))
    report_unreadable(results, lambda message: print(f"vitkit: warning: {message}", file=sys.stderr))


def visualize(path: str, images: list[str] | None = None, out: str = "figures", data: str | None = None,
              num_samples: int = 16, max_images: int = 4, seed: int = 0, device: str = "cpu",
              load: LoadOptions = LoadOptions()) -> None:
    """Attention maps, attention rollout and the paper's Figure 6 and 7 plots, plus report.html.

    Usage: vitkit visualize RUN_OR_WEIGHTS [IMAGES ...] --out DIR (options after the files).

    Reads the model and images; writes PNG figures and report.html to --out.
    Example: vitkit visualize runs/digits --data digits --out runs/digits/figures

    Args:
        path: a run or model folder, another library's checkpoint or folder, or a Hub id.
        images: image files to look at; without them, a sample of --data, else random noise.
        out: directory for the PNG figures and report.html.
        data: an image folder to sample from when no images are given, or "digits" for the
            built-in digits set.
        num_samples: how many images to sample from --data (or of noise) for attention distance.
        max_images: how many images get attention and rollout figures.
        seed: seed for sampling images and for noise.
        device: where the model runs (cpu, cuda, ...).
        load: what the checkpoint may not record (heads, classes, normalization).
    """
    from .visualize import visualize_path

    print_lines(visualize_path(path, out, images, data, num_samples, max_images, seed, device, load).lines())


def convert(src: str, out: str, to: Literal["vitkit", "timm", "hf", "npz"] = "vitkit",
            naming: Literal["vit_jax", "big_vision"] = "vit_jax", image_size: int | None = None,
            num_classes: int | None = None, resize_mode: Literal["bicubic", "bilinear", "jax"] = "bicubic",
            load: LoadOptions = LoadOptions(), overwrite: bool = False) -> None:
    """Convert a ViT checkpoint (official .npz, timm, Hugging Face, torchvision, vitkit) to another format.

    Usage: vitkit convert SRC OUT --to timm|hf|npz|vitkit. Prints what was found and done.

    Example: vitkit convert vit_base.npz runs/b16 --to vitkit

    Args:
        src: the checkpoint: a file (.npz, .pth, .bin, .safetensors), a model folder or a Hub id.
        out: where to write: a directory for vitkit and hf (with preprocessor_config.json for
            transformers' pipeline); for timm a directory that timm.create_model("local-dir:OUT")
            opens, or a bare state dict when OUT ends in .pth, .pt, .bin or .safetensors; a file for npz.
        to: output format.
        naming: parameter names of an npz output: vit_jax (the paper's code) or big_vision.
        image_size: resize the position embeddings for this input size (2D interpolation).
        num_classes: replace the head by a zero-initialized one with this many classes.
        resize_mode: interpolation of the position embeddings: bicubic, bilinear, or jax
            (scipy zoom order 1, as the official code).
        load: what the checkpoint may not record (heads, pooling, classes, normalization) and
            --load.strict false to convert what fits.
        overwrite: replace a folder OUT that is not empty (a run or model folder included), whole;
            converting a model onto itself is refused either way.
    """
    from .loading import convert as convert_checkpoint

    path, report = convert_checkpoint(src, out, to=to, naming=naming, options=load, image_size=image_size,
                                      num_classes=num_classes, resize_mode=resize_mode, overwrite=overwrite)
    print(f"{report}\nwrote {path} ({to})")


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 16,
          max_wait_ms: float = 5.0, max_bytes: int = 20 * 1024 * 1024, max_pixels: int = 40_000_000,
          api_key: str | None = None, threads: int | None = None, precision: str = "auto",
          access_log: bool = True, engine: Literal["auto", "torch", "onnx"] = "auto") -> None:
    """Serve a model over HTTP: a JSON API and a web page that shows what the model sees.

    POST /v1/predict and /v1/explain (top classes; attention rollout), GET /v1/model, /health,
    and the page at /. Usage: vitkit serve MODEL [--port 8000]; needs the serve extra
    (pip install 'vitkit[serve]'). Stop with Ctrl-C or SIGTERM: requests in flight are finished.

    Example: vitkit serve runs/digits --port 8080

    Args:
        model: a run directory, a vitkit model directory, another library's checkpoint, or
            an exported .onnx file.
        host: address to listen on; anything but a loopback address without an API key prints
            a warning.
        port: TCP port.
        max_batch: most images per forward pass; concurrent requests are batched.
        max_wait_ms: longest a request waits for others to share its forward pass.
        max_bytes: largest request body; larger ones get 413 before they are read.
        max_pixels: largest image (width x height); larger ones get 413 (decompression bombs).
        api_key: require 'Authorization: Bearer KEY' or 'X-API-Key: KEY' on /v1/* (default:
            the VITKIT_API_KEY environment variable; none: no key needed).
        threads: torch intra-op threads (default: the cores available to this process).
        precision: auto (bf16 where the hardware has native bf16), fp32 or bf16.
        access_log: log one line per request.
        engine: what runs fp32 inference on a CPU: auto (ONNX Runtime, the graph exported once
            and cached, where that pays), torch, or onnx.
    """
    try:
        from .serve import ServeOptions
        from .serve import serve as run_server
    except ImportError as e:
        raise ValueError(f"vitkit serve needs the serve extra: pip install 'vitkit[serve]' ({e})") from None
    options = ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms, max_bytes=max_bytes,
                           max_pixels=max_pixels, api_key=api_key, precision=precision, engine=engine)
    run_server(model, host, port, options, threads=threads, access_log=access_log)


def export(model: str, out: str, format: Literal["onnx", "pt2"] = "onnx", image_size: int | None = None,
           int8: bool = False, calibration: str | None = None, calibration_limit: int = 256,
           verify: bool = True, load: LoadOptions = LoadOptions(), features: FeatureOptions | bool = False,
           dynamic_size: bool = False) -> None:
    """Export a model to ONNX (for onnxruntime, optionally int8) or a torch.export .pt2 file
    that holds the class names, input spec and config; then check it against eager fp32.
    With --features true: an ONNX file of the feature extractor instead of the classifier.

    Reads MODEL (a vitkit model); writes OUT and prints notes, its size and the check.
    Example: vitkit export runs/digits digits.onnx --int8 true --calibration images/; features:
    vitkit export runs/pretrain encoder.onnx --features true --features.token mean

    Args:
        model: a run or model folder, another library's checkpoint or folder, or a Hub id.
        out: the file to write (.onnx or .pt2).
        format: onnx (onnxruntime, dynamic batch) or pt2 (torch.export.load, dynamic batch).
        image_size: the input size the file is fixed to (default: the model's); learned position
            embeddings are resampled once, before export.
        int8: ONNX only: quantize to int8 for CPUs (onnxruntime; per-channel weights).
        calibration: a folder (or file) of real images: checked against eager fp32 after
            writing, instead of random inputs.
        calibration_limit: most calibration images read.
        verify: run the written file on a few inputs and compare it with eager fp32.
        load: what the checkpoint may not record (heads, classes, normalization).
        features: true: export the features vitkit embed computes (output features, B x D) and
            that block's patch tokens (output tokens, B x D x h x w) instead of the logits;
            --features.layer, --features.token and --features.norm choose them (and imply true).
        dynamic_size: ONNX only: one graph for any image size the patch size divides (H and W
            symbolic; position embeddings resampled in the graph); --image_size is the default.
    """
    from .export import export_file

    done = export_file(model, out, format, image_size, int8, calibration, calibration_limit, verify, load,
                       features, dynamic_size)
    print_lines(done.lines())


def shards(src: str, out: str, shard_size: int = 1000, seed: int = 0) -> None:
    """Write an image folder (root/<class>/<image>) as WebDataset-style tar shards for streaming.

    Writes OUT/shard-NNNNNN.tar and OUT/index.json.
    Example: vitkit shards photos/ photo-shards/ --shard_size 500

    Args:
        src: the image folder (any folder vitkit trains on).
        out: the directory to write shard-NNNNNN.tar and index.json into.
        shard_size: images per shard.
        seed: the random order in which images are spread over the shards (classes mixed).
    """
    from .data.shards import shard_folder

    print(shard_folder(src, out, shard_size, seed))


def consolidate(run: str, out: str, ema: bool | None = None, overwrite: bool = False) -> None:
    """Write a model folder (config.json + model.safetensors) from an FSDP run's sharded checkpoint.

    Example: vitkit consolidate runs/fsdp runs/fsdp-model

    Args:
        run: the run directory (holding state.dcp/).
        out: the model folder to write; predict, evaluate, export and serve open it.
        ema: the EMA weights (default: when the run kept an EMA) or the trained weights (false).
        overwrite: write into a folder OUT that is not empty (a model folder included).
    """
    from .checkpoint import check_output_folder
    from .training.sharding import consolidate as write

    check_output_folder(out, overwrite, option=None, reading=(run,))
    print(f"wrote {write(run, out, ema)}")


def probe(weights: str, data: DataConfig = DataConfig(), features: FeatureOptions = FeatureOptions(),
          shots: list[int] | None = None, draws: int = 5, seed: int = 0, linear: bool = True, c: float = 1.0,
          knn_k: int = 20, temperature: float = 0.07, cache_dir: str | None = None, out: str | None = None,
          load: LoadOptions = LoadOptions(), json: bool = False) -> None:
    """Measure a frozen representation: few-shot linear accuracy as in the paper (closed-form
    ridge to {-1,1}^K targets), a logistic-regression probe and weighted k-NN, on the test split.

    Features are computed once and cached, so probing the same model and data again reads them.
    Reads WEIGHTS and the data; prints one table (and writes it as JSON with --out).
    Example: vitkit probe runs/pretrain --data.dataset digits --out probe.json

    Args:
        weights: a run or model folder, another library's checkpoint or folder, or a Hub id.
        data: the data: fitted on its training split, measured on its test (validation) split.
        features: which block and token are read, batch size and precision.
        shots: training images per class of the few-shot fits (default 1, 5, 10, 25; [] for none).
        draws: seeded random draws of the few-shot images (mean and spread are reported).
        seed: seed of the few-shot draws.
        linear: also fit the logistic-regression probe on every training feature.
        c: inverse L2 strength of the logistic regression.
        knn_k: neighbours of the k-NN read-out (0: none).
        temperature: k-NN vote weight exp(similarity / temperature).
        cache_dir: where features are cached (default: the vitkit cache directory).
        out: also write the results as JSON to this file.
        load: what the checkpoint may not record (heads, classes, normalization).
        json: print the results as JSON alone on stdout instead of the table.
    """
    from .probe import SHOTS, probe_path

    with json_mode(json):
        result = probe_path(weights, data, features, cache_dir, out, load, shots=list(SHOTS) if shots is None
                            else shots, draws=draws, seed=seed, linear=linear, c=c, knn_k=knn_k,
                            temperature=temperature)
    if json:
        print_json(result.to_dict())


def embed(weights: str, images: list[str], out: str | None = None, query: str | None = None, top: int = 5,
          features: FeatureOptions = FeatureOptions(), cache_dir: str | None = None,
          load: LoadOptions = LoadOptions(), json: bool = False) -> None:
    """Embeddings of image files (frozen features), written with the file names, or the images
    most similar to a query image (cosine).

    Usage: vitkit embed MODEL IMAGES_OR_FOLDER --out FILE.npy|.safetensors|.parquet, or --query IMG.
    Example: vitkit embed runs/digits photos/ --out photos.npy

    Args:
        weights: a run or model folder, another library's checkpoint or folder, or a Hub id.
        images: image files and/or folders (searched recursively).
        out: where to write: .npy (with FILE.names.json), .safetensors (names in its metadata) or
            .parquet (columns name and features, one row per image; pip install 'vitkit[parquet]').
        query: an image whose nearest neighbours among the images are printed.
        top: how many neighbours to print.
        features: which block and token are read, batch size and precision.
        cache_dir: where features are cached (default: the vitkit cache directory).
        load: what the checkpoint may not record (heads, classes, normalization).
        json: print what was computed, written and found as JSON alone on stdout.
    """
    from .embed import embed_images, summary_lines

    with json_mode(json):
        summary = embed_images(weights, images, out, query, top, features, cache_dir, load)
    print_json(summary) if json else print_lines(summary_lines(summary))


COMMANDS = {"info": info, "train": train, "pretrain": pretrain, "finetune": finetune, "distill": distill,
            "evaluate": evaluate,
            "predict": predict,
            "visualize": visualize, "convert": convert, "bench": bench, "serve": serve,
            "export": export, "shards": shards, "consolidate": consolidate, "probe": probe, "embed": embed}
# Commands whose trailing positional arguments fill a list parameter: command -> parameter.
FILE_LISTS = {"visualize": "images", "predict": "images", "embed": "images", "info": "models"}


def main(argv: list[str] | None = None) -> None:
    run_commands(COMMANDS, FILE_LISTS, argv)


if __name__ == "__main__":
    main()
