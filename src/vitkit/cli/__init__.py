"""The `vitkit` command: a thin layer over the library; every command is a plain function whose
docstring is its --help, grouped by what it does (training, inference, models, representations)."""

from __future__ import annotations

from .inference import bench, evaluate, predict, serve, visualize
from .models import consolidate, convert, export, info
from .representations import embed, probe, shards
from .support import run as run_commands
from .training import distill, finetune, pretrain, train

COMMANDS = {"info": info, "train": train, "pretrain": pretrain, "finetune": finetune, "distill": distill,
            "evaluate": evaluate, "predict": predict, "visualize": visualize, "convert": convert,
            "bench": bench, "serve": serve, "export": export, "shards": shards, "consolidate": consolidate,
            "probe": probe, "embed": embed}
# Commands whose trailing positional arguments fill a list parameter: command -> parameter.
FILE_LISTS = {"visualize": "images", "predict": "images", "embed": "images", "info": "models"}


def main(argv: list[str] | None = None) -> None:
    run_commands(COMMANDS, FILE_LISTS, argv)
