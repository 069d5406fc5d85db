"""The layers of docs/architecture.md hold: no module of src/vitkit imports one of a higher layer.

The table on that page is the one statement of the order; this test reads it, so the page and
the check cannot drift apart. Every import counts: at the top of a file, inside a function or
class, under `if TYPE_CHECKING:`; relative imports are resolved to the module they name."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PAGE = ROOT / "docs" / "architecture.md"
PACKAGE = "vitkit"

ROW = re.compile(r"^\|\s*(\d+)\s*\|([^|]*)\|([^|]*)\|")  # | layer | name | modules | ...
NAME = re.compile(r"`(vitkit(?:\.\w+)*)`")


def layer_table(text: str) -> dict[str, tuple[int, str]]:
    """{module or package: (layer, layer name)} from the table rows whose first cell is a number."""
    table: dict[str, tuple[int, str]] = {}
    for line in text.splitlines():
        row = ROW.match(line)
        if not row:
            continue
        for name in NAME.findall(row.group(3)):
            assert name not in table, f"{PAGE.name}: {name} stands in two layers"
            table[name] = (int(row.group(1)), row.group(2).strip())
    return table


def source_modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package (a package by its __init__.py)."""
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def layer_of(module: str, table: dict[str, tuple[int, str]]) -> tuple[int, str] | None:
    """The layer of the longest table name that is `module` or a package holding it; the bare
    package name places only its face, never the modules under it."""
    if module == PACKAGE:
        return table.get(PACKAGE)
    while module.startswith(PACKAGE + "."):
        if module in table:
            return table[module]
        module = module.rpartition(".")[0]
    return None


def imports(source: str, module: str, is_package: bool, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import of the package anywhere in `source`. A name
    taken from a module (`from .x import f`) counts as that module; a submodule taken from a
    package (`from . import x`) as the submodule."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base


def upward_imports(table: dict[str, tuple[int, str]], modules: dict[str, Path]) -> list[str]:
    """One line per import that points to a higher layer (or to a module the table does not place)."""
    problems = []
    for module, path in modules.items():
        here = layer_of(module, table)
        where = path.relative_to(ROOT)
        found = imports(path.read_text(), module, path.name == "__init__.py", set(modules))
        for line, target in sorted(set(found)):
            there = layer_of(target, table)
            if there is None:
                problems.append(f"{where}:{line}: {module} imports {target}, which no layer places")
            elif here is not None and there[0] > here[0]:
                problems.append(f"{where}:{line}: {module} (layer {here[0]}, {here[1]}) imports {target} "
                                f"(layer {there[0]}, {there[1]}), a layer above it")
    return problems


def test_the_page_holds_the_table():
    table = layer_table(PAGE.read_text())
    assert table[PACKAGE + ".cli"][0] == max(layer for layer, _ in table.values())
    assert table[PACKAGE + ".notices"][0] == 1


def test_every_module_has_a_layer():
    table = layer_table(PAGE.read_text())
    unplaced = [f"{path.relative_to(ROOT)} ({module})" for module, path in source_modules().items()
                if layer_of(module, table) is None]
    assert not unplaced, f"modules without a layer in {PAGE.relative_to(ROOT)}: {', '.join(unplaced)}"


def test_every_row_names_a_module():
    modules = source_modules()
    stale = [name for name in layer_table(PAGE.read_text()) if name not in modules]
    assert not stale, f"{PAGE.relative_to(ROOT)} places modules that do not exist: {', '.join(stale)}"


def test_no_import_points_up():
    problems = upward_imports(layer_table(PAGE.read_text()), source_modules())
    assert not problems, "imports that point up the layers of docs/architecture.md:\n" + "\n".join(problems)


def test_imports_inside_functions_and_relative_ones_are_seen():
    source = (
        "from ..checkpoint import read_meta\n"
        "from . import config\n"
        "def stored(meta):\n"
        "    from ..finetune.lora import from_meta\n"
        "    import vitkit.serve.app\n"
        "    return from_meta(meta)\n"
    )
    known = {"vitkit.checkpoint", "vitkit.training.config", "vitkit.finetune.lora", "vitkit.serve.app"}
    found = sorted(imports(source, "vitkit.training.resume", False, known))
    assert found == [(1, "vitkit.checkpoint"), (2, "vitkit.training.config"), (4, "vitkit.finetune.lora"),
                     (5, "vitkit.serve.app")]
    table = layer_table(PAGE.read_text())
    assert layer_of("vitkit.finetune.lora", table)[0] > layer_of("vitkit.training.resume", table)[0]
    assert layer_of("vitkit", table) == table["vitkit"] and layer_of("vitkit.nothing", table) is None
