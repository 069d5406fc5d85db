"""The commands that read and write model files: info, convert, export, consolidate."""

from __future__ import annotations

from typing import Literal

from ..features import FeatureOptions
from ..loading import LoadOptions
from .support import json_mode, print_json, print_lines


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
    from ..info import describe, format_model, format_table, variant_rows
    from ..loading import open_model

    with json_mode(json):
        found = [describe(open_model(m, load)) for m in models or []]
    rows = [] if models else variant_rows(image_size)
    if json:
        return print_json({"models": found} if models else {"image_size": image_size, "variants": rows})
    print("\n".join(format_model(d) for d in found) if models else
          f"ViT variants (1000 classes, {image_size}x{image_size}; GFLOPs = 2 x multiply-adds of one forward "
          f"pass, counted analytically)\n{format_table(rows, image_size)}")


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
    from ..loading import convert as convert_checkpoint

    path, report = convert_checkpoint(src, out, to=to, naming=naming, options=load, image_size=image_size,
                                      num_classes=num_classes, resize_mode=resize_mode, overwrite=overwrite)
    print(f"{report}\nwrote {path} ({to})")


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
    from ..export import export_file

    done = export_file(model, out, format, image_size, int8, calibration, calibration_limit, verify, load,
                       features, dynamic_size)
    print_lines(done.lines())


def consolidate(run: str, out: str, ema: bool | None = None, overwrite: bool = False) -> None:
    """Write a model folder (config.json + model.safetensors) from an FSDP run's sharded checkpoint.

    Example: vitkit consolidate runs/fsdp runs/fsdp-model

    Args:
        run: the run directory (holding state.dcp/).
        out: the model folder to write; predict, evaluate, export and serve open it.
        ema: the EMA weights (default: when the run kept an EMA) or the trained weights (false).
        overwrite: write into a folder OUT that is not empty (a model folder included).
    """
    from ..checkpoint import check_output_folder
    from ..training.sharding import consolidate as write

    check_output_folder(out, overwrite, option=None, reading=(run,))
    print(f"wrote {write(run, out, ema)}")


