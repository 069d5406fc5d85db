"""Label tables: a CSV, TSV or JSON-lines file of image paths and labels, read into the same
FolderIndex an image folder gives, so that caching, streaming and splitting are the folder's.

Paths are relative to the table's folder (absolute ones are used as they are). Columns are
found by their usual names, or named with --data.image_column / --data.label_column. Hugging
Face's imagefolder layout (images beside a metadata.csv or metadata.jsonl whose file_name
column names them) is the same table under another name. A row whose file is missing, or
whose image or label cell is empty, is refused in one line naming the row: a table that names
files it does not have is most often read from the wrong folder, and skipping the rows would
train on what is left without saying so. Files that are there but fail to decode are skipped
with the folder's warning.

A label column that holds several labels per image makes the set multi-label (labels become
multi-hot, and the trainer picks the multi-label objective): a list of several in JSON lines or
parquet, or text holding ";" or "," anywhere in the column (split there only, so a label may
hold spaces); a column named labels or tags without either separates them by spaces. A column
of one label per row is single-label as before.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from ..notices import one_line
from .folder import FolderIndex

IMAGE_COLUMNS = ("file", "path", "image", "filename", "file_name", "image_path")
LABEL_COLUMNS = ("label", "labels", "class", "tags")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}
METADATA_NAMES = ("metadata.csv", "metadata.jsonl")  # Hugging Face imagefolder
TAG_COLUMNS = ("labels", "tags")  # columns whose text may separate labels by spaces too


def _preview(names: list[str], limit: int = 10) -> str:
    shown = [one_line(n) for n in names[:limit]]
    return ", ".join(shown) + (", ..." if len(names) > limit else "")


def pick_column(columns: list[str], given: str | None, usual: tuple[str, ...], what: str, option: str,
                where: str) -> str:
    """The column named `given`, else the first of the usual names present (case-insensitive);
    a missing one is an error that names the columns there are."""
    if given is not None:
        if given in columns:
            return given
        raise ValueError(f"{where}: no {what} column {one_line(given)} (--data.{option}); the columns are "
                         f"{_preview(columns)}")
    lower = {c.lower(): c for c in reversed(columns)}
    for name in usual:
        if name in lower:
            return lower[name]
    raise ValueError(f"{where}: no {what} column (looked for {', '.join(usual)}); the columns are "
                     f"{_preview(columns)}; name it with --data.{option}")


def class_order(names: set[str]) -> list[str]:
    """Class names in order: numerically when every name is an integer ("2" before "10"), else
    as sorted strings."""
    def is_int(s: str) -> bool:
        return s.strip().lstrip("+-").isdigit()

    if names and all(is_int(n) for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def label_text(value: object) -> str | None:
    """A single-label cell as its class name (3.0 reads as "3"); None when it is empty. A list of
    one label (a tags column) is that label."""
    if isinstance(value, list | tuple):
        value = value[0] if len(value) == 1 else None
    return label_text_one(value)


def multilabel_split(values: list, column: str) -> tuple[bool, str | None]:
    """(whether a label column holds several labels per image, the pattern its text cells are
    split by): lists of several, or ";" / "," in any text cell; else, for a labels/tags column,
    spaces. Decided for the whole column so that every row is read the same way."""
    texts = [v for v in values if isinstance(v, str)]
    lists = any(isinstance(v, list | tuple) and len(v) > 1 for v in values)
    if any(";" in t or "," in t for t in texts):
        return True, r"[;,]"
    if column.lower() in TAG_COLUMNS and any(len(t.split()) > 1 for t in texts):
        return True, r"\s+"
    return lists, None


def cell_labels(value: object, split: str | None) -> list[str]:
    """Every label of one cell of a multi-label column (a list's items, or its text split),
    in order, without repeats."""
    if isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, str) and split:
        items = re.split(split, value)
    else:
        items = [value]
    return list(dict.fromkeys(t for t in (label_text_one(v) for v in items) if t is not None))


def label_text_one(value: object) -> str | None:
    """One label as text (3.0 reads as "3"); None when empty."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def multi_hot(labels: list[list[str]], classes: list[str]) -> list[tuple[int, ...]]:
    """Each image's labels as a 0/1 tuple over classes."""
    index = {c: k for k, c in enumerate(classes)}
    out = []
    for names in labels:
        row = [0] * len(classes)
        for n in names:
            row[index[n]] = 1
        out.append(tuple(row))
    return out


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(line number, row)]) of a CSV/TSV (by suffix) or JSON-lines file; a .json file
    holding one array of objects is read too."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{one_line(path)}: not a label table (expected {', '.join(TABLE_SUFFIXES)})")
    if not path.is_file():
        raise FileNotFoundError(f"{one_line(path)}: no such file")
    if TABLE_SUFFIXES[suffix] is not None:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=TABLE_SUFFIXES[suffix])
            columns = [c for c in (reader.fieldnames or []) if c is not None]
            rows = [(reader.line_num, {k: v for k, v in row.items() if k is not None}) for row in reader]
        return columns, rows
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{one_line(path)}: not JSON ({e})") from None
        numbered = list(enumerate(items, 1))
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{one_line(path)}: line {n}: not a JSON object ({e.msg})") from None
    columns: dict[str, None] = {}
    for n, row in numbered:
        if not isinstance(row, dict):
            raise ValueError(f"{one_line(path)}: line {n}: not a JSON object")
        columns.update(dict.fromkeys(row))
    return list(columns), numbered


def read_label_table(table: str | Path, image_column: str | None = None, label_column: str | None = None,
                     classes: list[str] | None = None, classes_of: str = "the model") -> FolderIndex:
    """The images a label table names, with their labels, as a FolderIndex.

    Classes are the sorted distinct labels unless given (a model's, or the training table's,
    named by classes_of), when a label not among them is an error.
    """
    table = Path(table)
    columns, rows = read_rows(table)
    where = one_line(table)
    if not rows:
        raise ValueError(f"{where}: no rows (an empty table)")
    image_col = pick_column(columns, image_column, IMAGE_COLUMNS, "image", "image_column", where)
    label_col = pick_column(columns, label_column, LABEL_COLUMNS, "label", "label_column", where)
    base = table.parent
    paths: list[Path] = []
    names: list[str] = []
    tags: list[list[str]] = []
    missing: list[tuple[int, int, str]] = []
    multi, split = multilabel_split([row.get(label_col) for _, row in rows], label_col)
    for i, (line, row) in enumerate(rows, 1):
        at = f"{where}: row {i} (line {line})"
        file = row.get(image_col)
        if not isinstance(file, str) or not file.strip():
            raise ValueError(f"{at}: empty {image_col} cell (no image named)")
        value = row.get(label_col)
        if multi:
            tags.append(cell_labels(value, split))
            label = tags[-1][0] if tags[-1] else None
        else:
            label = label_text(value)
        if label is None:
            raise ValueError(f"{at}: empty {label_col} cell (every image needs a label)")
        p = Path(os.path.normpath(base / file.strip()))
        if not p.is_file():
            missing.append((i, line, file))
        paths.append(p)
        names.append(label)
    if missing:
        i, line, file = missing[0]
        more = f" ({len(missing)} of the {len(rows)} rows name missing files)" if len(missing) > 1 else ""
        raise ValueError(f"{where}: row {i} (line {line}): {one_line(file)}: no such file{more}; paths are "
                         f"read relative to {one_line(base.resolve())}")
    seen = {t for row in tags for t in row} if multi else set(names)
    if classes is None:
        classes = class_order(seen)
    else:
        known = set(classes)
        unknown = class_order({n for n in seen if n not in known})
        if unknown:
            raise ValueError(f"{where}: label(s) {_preview(unknown)} not among {classes_of}'s {len(classes)} "
                             f"classes ({_preview(list(classes))})")
    index = {c: k for k, c in enumerate(classes)}
    labels = multi_hot(tags, list(classes)) if multi else [index[n] for n in names]
    # the root holds every file, so that names relative to it (cache keys, warnings) exist
    root = Path(os.path.commonpath([os.path.abspath(base), *(os.path.abspath(p) for p in paths)]))
    return FolderIndex(root, [Path(os.path.abspath(p)) for p in paths], labels, list(classes))


def metadata_table(folder: str | Path) -> Path | None:
    """The imagefolder metadata file (metadata.csv or metadata.jsonl) directly in folder, if any."""
    folder = Path(folder)
    for name in METADATA_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def labelled_metadata(folder: str | Path, label_column: str | None = None) -> Path | None:
    """The metadata file of folder when it has a label column (then it gives the labels instead
    of class subfolders); None when there is none, or it only describes the images."""
    table = metadata_table(folder)
    if table is None:
        return None
    if label_column is not None:
        return table  # named: a missing column is an error, reported when the table is read
    columns, _ = read_rows(table)
    lower = {c.lower() for c in columns}
    return table if any(n in lower for n in LABEL_COLUMNS) else None
