"""The `vitkit` command: a thin layer over the library; every command is a plain function."""

from __future__ import annotations

import sys
from typing import Literal


def info(image_size: int = 224) -> None:
    """Print the named variants: layers, width, MLP size, heads, parameters and GFLOPs.

    Args:
        image_size: square input resolution used for the parameter and FLOP counts.
    """
    from .info import format_table, variant_rows

    print(f"ViT variants (1000 classes, {image_size}x{image_size}; GFLOPs = 2 x multiply-adds "
          "of one forward pass, counted analytically)")
    print(format_table(variant_rows(image_size), image_size))


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


COMMANDS = {"info": info, "visualize": visualize, "convert": convert}
# Commands whose trailing positional arguments fill a list parameter: command -> parameter.
FILE_LISTS = {"visualize": "images"}


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in FILE_LISTS:
            _run_with_file_list(argv[0], argv[1:])
        else:
            CLI(COMMANDS, args=argv, as_positional=False)
    except (ValueError, FileNotFoundError, PermissionError, KeyError) as e:
        print(f"vitkit: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
