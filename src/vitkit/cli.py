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


COMMANDS = {"info": info}


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    try:
        CLI(COMMANDS, args=argv, as_positional=False)
    except (ValueError, FileNotFoundError, PermissionError, KeyError) as e:
        print(f"vitkit: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
