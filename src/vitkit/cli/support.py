"""What the `vitkit` command needs beside its commands: parsing with jsonargparse (and the
places where it needs help), JSON on stdout, and which process of a distributed run prints."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator

from ..notices import plain_warnings

Command = Callable[..., object]


@contextlib.contextmanager
def json_mode(on: bool) -> Iterator[None]:
    """With --json true, stdout carries the JSON document alone: whatever else the work prints
    (progress, notes, downloads) goes to stderr meanwhile."""
    if not on:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str), flush=True)


def print_lines(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)


def is_main_process() -> bool:
    """Rank 0 of a distributed run (or a run of one process): the one that prints."""
    return os.environ.get("RANK", "0") == "0"


def run_with_file_list(func: Command, files: str, argv: list[str], commands: dict[str, Command]) -> None:
    """Run a command whose required parameters are positional and whose list parameter `files`
    takes all further positional arguments, e.g. `visualize RUN a.png b.png`; jsonargparse
    cannot derive such a variable-length positional from a signature."""
    doc = inspect.getdoc(func) or ""

    def arg_help(arg: str) -> str:
        m = re.search(rf"^\s*{arg}: (.*)$", doc, re.MULTILINE)
        return m.group(1) if m else ""

    params = inspect.signature(func).parameters
    required = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p != files]
    parser = parser_class(commands)(prog=f"vitkit {func.__name__}",
                                    description=doc.split("\nArgs:")[0].strip())
    for p in required:
        parser.add_argument(p, help=arg_help(p))
    parser.add_argument(files, nargs="*", default=[], help=arg_help(files))
    parser.add_function_arguments(func, skip=set(required) | {files})
    init = parser.instantiate(parser.parse_args(argv))
    func(**{p: init[p] for p in params})


_NEGATIVE = r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-inf|-nan"


def join_negative_values(argv: list[str]) -> list[str]:
    """`--optim.lr -1e-3` as `--optim.lr=-1e-3`: argparse takes a negative number in exponent
    notation for an option, so a value that looks like a negative number is joined to its option."""
    out: list[str] = []
    for a in argv:
        if out and re.fullmatch(_NEGATIVE, a) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out


def described(description: str | None, commands: dict[str, Command]) -> str | None:
    """A command's whole docstring before its Args (inputs, outputs, an example) for its --help,
    where jsonargparse gives only the first line."""
    for func in commands.values():
        doc = inspect.getdoc(func) or ""
        if description and doc.startswith(description.strip()):
            return doc.split("\nArgs:")[0].strip()
    return description


def parser_class(commands: dict[str, Command]) -> type:
    """jsonargparse's parser with whole descriptions and one-line errors."""
    from jsonargparse import ArgumentParser

    class Parser(ArgumentParser):
        def __init__(self, *args, description: str | None = None, **kwargs):
            super().__init__(*args, description=described(description, commands), **kwargs)

        def error(self, message: str, ex: Exception | None = None):
            """One line naming the option and the value, instead of the usage and a list of the
            types jsonargparse tried."""
            print(f"vitkit: error: {one_line_parse_error(message)} (--help lists the options)",
                  file=sys.stderr)
            raise SystemExit(2)

    return Parser


def one_line_parse_error(message: str) -> str:
    """'Parser key "run.epochs": ... Given value: abc' -> '--run.epochs abc: expected an int'."""
    key = re.search(r'Parser key "([^"]+)"', message)
    given = re.search(r"Given value: (.*)", message) or re.search(r"Got value: (.*)", message)
    wanted = [t for t in re.findall(r"Expected a <class '(\w+)'>", message) if t != "NoneType"]
    choices = re.search(r"Literal\[([^\]]*)\]", message)
    if key and given:
        kind = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(
            wanted[0] if wanted else "", "a value of the option's type")
        if choices:
            kind = "one of " + ", ".join(c.strip().strip("'\"") for c in choices.group(1).split(","))
        return f"--{key.group(1)} {given.group(1).strip()}: expected {kind}"
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else "bad arguments"


def run(commands: dict[str, Command], file_lists: dict[str, str], argv: list[str] | None = None) -> None:
    """Parse `argv` (default: the process's) and run the command it names; a ValueError (and the
    other errors a user's input causes) is one line on stderr and exit status 2."""
    from jsonargparse import CLI

    from ..training.stop import NonFiniteLoss

    argv = join_negative_values(sys.argv[1:] if argv is None else list(argv))
    plain_warnings()
    try:
        if argv and argv[0] in file_lists:
            run_with_file_list(commands[argv[0]], file_lists[argv[0]], argv[1:], commands)
        else:
            CLI(commands, args=argv, parser_class=parser_class(commands))
    except (ValueError, FileNotFoundError, PermissionError, NonFiniteLoss) as e:
        print(f"vitkit: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
