"""The `vitkit` command: a thin layer over the library; every command is a plain function."""

from __future__ import annotations

import sys


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
    required = [p for p, v in params.items() if v.default is inspect.Parameter.empty]
    parser = ArgumentParser(prog=f"vitkit {name}", description=doc.split("\n\n")[0])
    for p in required:
        parser.add_argument(p, help=arg_help(p))
    parser.add_argument(files, nargs="*", default=[], help=arg_help(files))
    parser.add_function_arguments(func, skip=set(required) | {files})
    func(**parser.parse_args(argv).as_dict())


COMMANDS = {"info": info, "visualize": visualize}
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
