"""Hugging Face datasets as vitkit reads them: parquet files (read with pyarrow, so a parquet
file needs no `datasets`), folders written by Dataset.save_to_disk / DatasetDict.save_to_disk,
and Hub dataset ids (through `datasets`, its cache and its offline switches HF_DATASETS_OFFLINE /
HF_HUB_OFFLINE).

The image column is the one Image feature (else a column of {bytes, path} structs, else one of
the usual names); the label column the one ClassLabel feature (else one of the usual names),
whose names are the classes; plain int or string labels give the sorted distinct values.
Images are decoded once (upright: preprocess.open_image) into the folders' uint8 cache, keyed by
the dataset's fingerprint or the files' sizes and times; sets over the cache budget stream.
A cell with no image, or whose bytes are no image at all, and a row without a label, are refused
in one line naming the row and column; images that are there but corrupt or truncated are
skipped with the folders' warning.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import UnidentifiedImageError

from ..cache import default_cache_dir
from ..notices import VitkitWarning, first_line, one_line
from .arrays import ImageArrays, label_item, labels_tensor, on_canvas
from .folder import _DECODE_ERRORS, probe_images, read_decoded_cache, write_decoded_cache
from .preprocess import DECODING, Fit, image_to_uint8, open_image
from .tables import (
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    cell_labels,
    class_order,
    label_text,
    multi_hot,
    multilabel_split,
    pick_column,
)

HF_FIX = "pip install 'vitkit[hf]'"
VAL_SPLITS = ("validation", "valid", "val", "test")
SPLIT_NAMES = ("train", *VAL_SPLITS, "dev", "eval")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def need_datasets(what: str):
    """The datasets module, or one line naming the extra that installs it."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{what} needs the datasets library: {HF_FIX}") from None
    return datasets


# ---- where the rows come from --------------------------------------------------------------

class ParquetRows:
    """Parquet files read as one table, a row group at a time, with no `datasets`."""

    def __init__(self, files: list[Path]):
        import pyarrow.parquet as pq

        self.files = files
        self.groups: list[tuple[int, int, int, int]] = []  # (file, row group, first row, rows)
        start = 0
        schema = None
        for k, f in enumerate(files):
            try:
                pf = pq.ParquetFile(f)
            except Exception as e:  # pyarrow raises several kinds for files that are not parquet
                raise ValueError(f"{one_line(f)}: not a readable parquet file ({first_line(e)})") from None
            if schema is None:
                schema = pf.schema_arrow
            elif pf.schema_arrow.names != schema.names:
                raise ValueError(f"{one_line(f)}: its columns ({', '.join(pf.schema_arrow.names)}) differ "
                                 f"from those of {one_line(files[0])}")
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                self.groups.append((k, g, start, n))
                start += n
        self.n = start
        self.schema = schema
        self.base = files[0].parent  # where relative image paths are read from
        self.features = _parquet_features(schema)
        self._open: dict[int, object] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def _file(self, k: int):
        import pyarrow.parquet as pq

        if k not in self._open:
            self._open[k] = pq.ParquetFile(self.files[k])
        return self._open[k]

    def column(self, name: str):
        import pyarrow as pa

        return pa.chunked_array([self._file(k).read_row_group(g, columns=[name]).column(0)
                                 for k, g, _, _ in self.groups], type=self.schema.field(name).type)

    def cells(self, name: str, rows: list[int]) -> Iterator[tuple[list[int], object]]:
        """(rows, their cells as a pyarrow array), a row group at a time; rows ascending."""
        import pyarrow as pa

        i = 0
        for k, g, start, n in self.groups:
            j = i
            while j < len(rows) and rows[j] < start + n:
                j += 1
            if j > i:
                col = self._file(k).read_row_group(g, columns=[name]).column(0).combine_chunks()
                yield rows[i:j], col.take(pa.array([r - start for r in rows[i:j]]))
            i = j

    def key(self) -> str:
        stamps = []
        for f in self.files:
            st = os.stat(f)
            stamps.append(f"{Path(f).resolve()}|{st.st_size}|{st.st_mtime_ns}")
        return "parquet|" + "|".join(stamps)


class DatasetRows:
    """A datasets.Dataset (save_to_disk folder, Hub download): memory-mapped, random access."""

    def __init__(self, ds, base: Path):
        self.ds = ds
        self.n = len(ds)
        self.base = base
        self.schema = ds.features.arrow_schema
        self.features = {k: {"_type": type(v).__name__, "names": getattr(v, "names", None)}
                         for k, v in ds.features.items()}
        self._arrow: dict[str, object] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrow": {}}

    def _view(self, name: str):
        if name not in self._arrow:  # raw arrow cells: no image is decoded by `datasets`
            self._arrow[name] = self.ds.select_columns([name]).with_format("arrow")
        return self._arrow[name]

    def column(self, name: str):
        return self._view(name)[name]

    def cells(self, name: str, rows: list[int], chunk: int = 256) -> Iterator[tuple[list[int], object]]:
        view = self._view(name)
        for i in range(0, len(rows), chunk):
            part = rows[i:i + chunk]
            yield part, view[part].column(0).combine_chunks()

    def cell(self, name: str, row: int):
        return self._view(name)[int(row)].column(0)[0].as_py()

    def key(self) -> str:
        stamps = [f"{f['filename']}|{os.stat(f['filename']).st_size}" for f in self.ds.cache_files
                  if os.path.exists(f["filename"])]
        return f"dataset|{self.ds._fingerprint}|{'|'.join(stamps)}"


class ArrowFileRows:
    """One column of a parquet source copied into an Arrow IPC file, memory-mapped: random access
    for streaming, which parquet row groups do not give cheaply."""

    def __init__(self, file: Path, base: Path):
        self.file, self.base = file, base
        self._table = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_table": None}

    def cell(self, name: str, row: int):
        import pyarrow as pa

        if self._table is None:
            self._table = pa.ipc.open_file(pa.memory_map(str(self.file))).read_all()
        return self._table.column(0)[int(row)].as_py()


def _parquet_features(schema) -> dict[str, dict]:
    """The features `datasets` records in a parquet file's metadata (none when it wrote none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    try:
        features = json.loads(raw).get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return {}
    return {k: v for k, v in features.items() if isinstance(v, dict)} if isinstance(features, dict) else {}


# ---- one split of a source, as an index --------------------------------------------------------

@dataclass
class TableIndex:
    """The rows of a table source to use: the image column, their labels and the classes; the
    counterpart of folder.FolderIndex."""

    source: ParquetRows | DatasetRows | ArrowFileRows
    column: str  # the image column
    rows: list[int]  # ascending
    labels: list[int]
    classes: list[str]
    name: str  # how messages name it
    key: str  # the source's identity (fingerprint or files), for cache keys

    def subset(self, keep) -> TableIndex:
        return replace(self, rows=[self.rows[i] for i in keep], labels=[self.labels[i] for i in keep])


def _is_image_type(t) -> bool:
    import pyarrow as pa

    if pa.types.is_struct(t):
        names = {t.field(i).name for i in range(t.num_fields)}
        return bool(names & {"bytes", "path"})
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string(t) \
        or pa.types.is_large_string(t)


def image_column(source, given: str | None, where: str) -> str:
    """The given column, else the one Image feature, else the one {bytes, path} column, else a usual
    name; a column that holds no images is refused, naming its type."""
    import pyarrow as pa

    names = list(source.schema.names)
    if given is None:
        images = [k for k, v in source.features.items() if v.get("_type") == "Image" and k in names]
        if not images:  # no features recorded: the columns of {bytes, path} structs
            images = [k for k in names if pa.types.is_struct(source.schema.field(k).type)
                      and _is_image_type(source.schema.field(k).type)]
        if len(images) > 1:
            raise ValueError(f"{where}: {len(images)} image columns ({', '.join(images)}); choose one with "
                             "--data.image_column")
        col = images[0] if images else pick_column(names, None, ("image", "img", *IMAGE_COLUMNS), "image",
                                                   "image_column", where)
    else:
        col = pick_column(names, given, IMAGE_COLUMNS, "image", "image_column", where)
    t = source.schema.field(col).type
    if not _is_image_type(t):
        raise ValueError(f"{where}: column {one_line(col)} holds {t}, not images (an Image feature: "
                         "{bytes, path}, encoded bytes or file paths)")
    return col


def label_column(source, given: str | None, image: str, where: str) -> str:
    """The given column, else the one ClassLabel feature, else a usual name."""
    names = [n for n in source.schema.names if n != image]
    if given is not None:
        return pick_column(list(source.schema.names), given, LABEL_COLUMNS, "label", "label_column", where)
    labels = [k for k, v in source.features.items() if v.get("_type") == "ClassLabel" and k in names]
    if len(labels) > 1:
        raise ValueError(f"{where}: {len(labels)} ClassLabel columns ({', '.join(labels)}); choose one with "
                         "--data.label_column")
    return labels[0] if labels else pick_column(names, None, LABEL_COLUMNS, "label", "label_column", where)


class NoLabels(ValueError):
    """A split whose label column is empty in every row (a Hub test split without labels)."""


def read_labels(source, col: str, where: str, classes: list[str] | None = None,
                classes_of: str = "the model") -> tuple[list[int], list[str]]:
    """(label of every row, classes): a ClassLabel's names, else the sorted distinct values; given
    classes (a model's, or the training split's) are matched by name."""
    feature = source.features.get(col, {})
    inner = feature.get("feature") if feature.get("_type") in ("Sequence", "List", "LargeList") else None
    if isinstance(inner, dict) and inner.get("_type") == "ClassLabel":  # Sequence(ClassLabel): tags
        return _read_tags(source, col, where, [str(n) for n in inner.get("names", [])], classes, classes_of)
    names = feature.get("names") if feature.get("_type") == "ClassLabel" else None
    values = source.column(col).to_pylist()
    if names is None and multilabel_split(values, col)[0]:
        return _read_tags(source, col, where, None, classes, classes_of)
    text: list[str] = []
    # a ClassLabel's -1 is `datasets`' "no label" (the test splits of many Hub datasets)
    empty = [i for i, v in enumerate(values) if v is None or v == [] or (isinstance(v, str) and not v.strip())
             or (names is not None and v == -1)]
    if empty and len(empty) == len(values):
        raise NoLabels(f"{where}: column {col} holds no labels (every row is empty)")
    if empty:
        raise ValueError(f"{where}: row {empty[0]} (counting from 0), column {col}: empty label"
                         + (f" ({len(empty)} rows have none)" if len(empty) > 1 else ""))
    for i, v in enumerate(values):
        if names is not None and isinstance(v, int) and not isinstance(v, bool):
            if not 0 <= v < len(names):
                raise _outside_names(where, i, col, v, names)
            text.append(str(names[v]))
        else:
            text.append(label_text(v) or "")
    own = [str(n) for n in names] if names is not None else class_order(set(text))
    if classes is None:
        classes = own
    else:
        known = set(classes)
        unknown = class_order({t for t in text if t not in known})
        if unknown:
            preview = ", ".join(one_line(c) for c in classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise ValueError(f"{where}: label(s) {', '.join(one_line(u) for u in unknown[:10])} not among "
                             f"{classes_of}'s {len(classes)} classes ({preview})")
    lookup = {c: k for k, c in enumerate(classes)}
    return [lookup[t] for t in text], list(classes)


def _outside_names(where: str, row: int, col: str, value, names: list) -> ValueError:
    return ValueError(f"{where}: row {row} (counting from 0), column {col}: label {value} is outside the "
                      f"{len(names)} ClassLabel names ({', '.join(map(str, names[:10]))}"
                      f"{', ...' if len(names) > 10 else ''})")


def _read_tags(source, col: str, where: str, names: list[str] | None, classes: list[str] | None,
               classes_of: str) -> tuple[list[tuple[int, ...]], list[str]]:
    """A multi-label column (several labels per row: a list, a Sequence(ClassLabel), or text
    separated as tables.multilabel_split says) as multi-hot rows over the classes."""
    values = source.column(col).to_pylist()
    _, split = multilabel_split(values, col)
    rows: list[list[str]] = []
    for i, v in enumerate(values):
        if names is not None:
            items = v if isinstance(v, list | tuple) else [v]
            bad = [x for x in items if not isinstance(x, int) or not 0 <= x < len(names)]
            if bad:
                raise _outside_names(where, i, col, bad[0], names)
            tags = list(dict.fromkeys(names[x] for x in items))
        else:
            tags = cell_labels(v, split)
        if not tags:
            raise ValueError(f"{where}: row {i} (counting from 0), column {col}: empty label")
        rows.append(tags)
    seen = {t for r in rows for t in r}
    if classes is None:
        classes = names if names is not None else class_order(seen)
    else:
        unknown = class_order({t for t in seen if t not in set(classes)})
        if unknown:
            preview = ", ".join(one_line(c) for c in classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise ValueError(f"{where}: label(s) {', '.join(one_line(u) for u in unknown[:10])} not among "
                             f"{classes_of}'s {len(classes)} classes ({preview})")
    return multi_hot(rows, list(classes)), list(classes)


def make_index(source, name: str, image_col: str | None, label_col: str | None,
               classes: list[str] | None = None, classes_of: str = "the model") -> TableIndex:
    """Every row of a source, with its labels and classes, checked before any image is decoded."""
    if source.n == 0:
        raise ValueError(f"{name}: no rows (an empty table)")
    image = image_column(source, image_col, name)
    label = label_column(source, label_col, image, name)
    labels, classes = read_labels(source, label, name, classes, classes_of)
    key = f"{source.key()}|{image}|{label}"
    return TableIndex(source, image, list(range(source.n)), labels, classes, name, key)


# ---- opening a path, a folder or a Hub id -------------------------------------------------------

def _split_of(file: Path, root: Path) -> str:
    """The split a parquet file of a Hub-style folder holds: train-00000-of-00001.parquet,
    train.parquet and mnist-train-00000.parquet are "train", as is train/0000.parquet; "" when
    nothing names one."""
    for part in file.stem.lower().split("-"):
        if part in SPLIT_NAMES:
            return part
    for parent in file.relative_to(root).parents:
        if parent.name.lower() in SPLIT_NAMES:
            return parent.name.lower()
    return ""


def _parquet_files(path: str) -> list[Path]:
    files = sorted(Path(f) for f in glob.glob(path, recursive=True) if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(f"{one_line(path)}: no such file" if not glob.has_magic(path)
                                else f"{one_line(path)}: no file matches")
    return files


def open_source(path: str, subset: str | None = None) -> dict[str, ParquetRows | DatasetRows]:
    """The splits of a parquet file or glob, a folder (save_to_disk, or Hub-style parquet files)
    or a Hub dataset id: {split name: rows}, with "" the one split of a source that names none."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ValueError(f"{one_line(path)}: dataset 'hf' needs pyarrow: {HF_FIX}") from None
    p = Path(path)
    if glob.has_magic(path) or (p.suffix.lower() == ".parquet" and not p.is_dir()):
        return {"": ParquetRows(_parquet_files(path))}
    if p.is_dir():
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            datasets = need_datasets(f"{one_line(path)} (a save_to_disk folder)")
            try:
                loaded = datasets.load_from_disk(str(p))
            except Exception as e:
                raise ValueError(f"{one_line(path)}: not a readable save_to_disk folder ({first_line(e)})") \
                    from None
            if isinstance(loaded, datasets.DatasetDict):
                return {k: DatasetRows(v, p / k) for k, v in loaded.items()}
            return {"": DatasetRows(loaded, p)}
        files = sorted(f for f in p.rglob("*.parquet") if f.is_file())
        if not files:
            raise ValueError(f"{one_line(path)}: neither a save_to_disk folder (dataset_dict.json, "
                             "state.json) nor a folder of parquet files")
        groups: dict[str, list[Path]] = {}
        for f in files:
            groups.setdefault(_split_of(f, p), []).append(f)
        if "" in groups and len(groups) > 1:  # files beside named splits: not one of them
            groups.pop("")
        return {k: ParquetRows(v) for k, v in groups.items()}
    if p.exists():
        raise ValueError(f"{one_line(path)}: not a parquet file (expected .parquet, a glob of them, a "
                         "save_to_disk folder or a Hub dataset id)")
    if not _HUB_ID.match(path) or path.endswith(".parquet"):
        raise FileNotFoundError(f"{one_line(path)}: no such file or folder")
    return _hub_splits(path, subset)


def _hub_splits(repo_id: str, subset: str | None) -> dict[str, DatasetRows]:
    datasets = need_datasets(f"{repo_id} (a Hub dataset id)")
    from datasets import config

    try:
        loaded = datasets.load_dataset(repo_id, subset)
    except Exception as e:  # the Hub and the cache raise many kinds; each is one line here
        offline = " (offline: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set)" if config.HF_HUB_OFFLINE else ""
        raise ValueError(f"{repo_id}: no such local path, and the Hub dataset could not be loaded"
                         f"{offline}: {first_line(e)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        return {k: DatasetRows(v, Path.cwd()) for k, v in loaded.items()}
    return {"": DatasetRows(loaded, Path.cwd())}


def _named(path: str, split: str) -> str:
    return f"{path} (split {split})" if split else path


def pick_split(splits: dict, want: str | None, names: tuple[str, ...], path: str, option: str) -> str | None:
    """The split asked for (it must exist), else the first of names present, else None."""
    if "" in splits:
        return ""
    if want is not None:
        if want not in splits:
            raise ValueError(f"{one_line(path)}: no split {want!r} (--data.{option}); the splits are "
                             f"{', '.join(sorted(splits))}")
        return want
    return next((n for n in names if n in splits), None)


def train_and_val(cfg) -> tuple[TableIndex, TableIndex | None, list[str]]:
    """The training index, the validation index (None: split off val_split) and notes, for a
    DataConfig with dataset "hf"."""
    notes: list[str] = []
    splits = open_source(cfg.path, cfg.subset)
    train_name = pick_split(splits, cfg.train_split, (), cfg.path, "train_split")
    train = make_index(splits[train_name], _named(cfg.path, train_name), cfg.image_column, cfg.label_column)
    val = None
    if cfg.val_path:
        vsplits = open_source(cfg.val_path, cfg.subset)
        vname = pick_split(vsplits, cfg.val_split_name, VAL_SPLITS, cfg.val_path, "val_split_name")
        if vname is None:
            raise ValueError(f"{one_line(cfg.val_path)}: no validation split (looked for "
                             f"{', '.join(VAL_SPLITS)}); name one with --data.val_split_name")
        val = make_index(vsplits[vname], _named(cfg.val_path, vname), cfg.image_column, cfg.label_column,
                         train.classes, one_line(cfg.path))
    elif train_name:  # a source with named splits
        if cfg.val_split_name is not None:
            vname = pick_split(splits, cfg.val_split_name, (), cfg.path, "val_split_name")
            if vname == train_name:
                raise ValueError(f"--data.val_split_name {vname}: the training split itself")
        else:
            vname = next((n for n in VAL_SPLITS if n in splits and n != train_name), None)
        if vname is not None:
            try:
                val = make_index(splits[vname], _named(cfg.path, vname), cfg.image_column, cfg.label_column,
                                 train.classes, f"split {train_name}")
                notes.append(f"{one_line(cfg.path)}: training images from split {train_name}, validation "
                             f"from split {vname}")
            except NoLabels:
                if cfg.val_split_name is not None:
                    raise
                notes.append(f"{one_line(cfg.path)}: split {vname} has no labels; validation split off "
                             f"split {train_name}")
    return train, val, notes


def eval_index(cfg, classes: list[str]) -> TableIndex:
    """Every row of the split to evaluate on: --data.val_path or --data.path; of a source with
    splits, --data.val_split_name, else the first validation split present, else train_split."""
    path = cfg.val_path or cfg.path
    splits = open_source(path, cfg.subset)
    name = pick_split(splits, cfg.val_split_name, VAL_SPLITS, path, "val_split_name")
    if name is None:
        name = pick_split(splits, cfg.train_split, (), path, "train_split")
    return make_index(splits[name], _named(path, name), cfg.image_column, cfg.label_column, classes)


# ---- decoding --------------------------------------------------------------------------------

def _cell_input(cell, base: Path):
    """What open_image reads for a cell: a stream of its bytes, else its file path; None if empty."""
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
    elif isinstance(cell, bytes | bytearray | memoryview):
        data, path = bytes(cell), None
    else:
        data, path = None, cell
    if data:
        return io.BytesIO(data)
    if isinstance(path, str) and path:
        return str(base / path)
    return None


def _first_empty(arr) -> int | None:
    """The first position of a pyarrow array of cells holding no image (null, or no bytes and
    no path)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def empty(a):
        return pc.or_kleene(a.is_null(), pc.equal(pc.binary_length(a), 0)).fill_null(True)

    if pa.types.is_struct(arr.type):
        names = {arr.type.field(i).name for i in range(arr.type.num_fields)}
        none = arr.is_null()
        inner = None
        for f in ("bytes", "path"):
            if f in names:
                e = empty(arr.field(f))
                inner = e if inner is None else pc.and_(inner, e)
        bad = pc.or_(none, inner) if inner is not None else none
    else:
        bad = empty(arr)
    hits = pc.indices_nonzero(bad)
    return int(hits[0].as_py()) if len(hits) else None


def _empty_cell(index: TableIndex, row: int) -> ValueError:
    return ValueError(f"{index.name}: row {row} (counting from 0), column {index.column}: no image "
                      "(the cell is empty)")


def _decode_cell(args) -> np.ndarray | str:
    """A cell decoded to a uint8 (C, H, W) array, else why not: "not an image", "missing", "corrupt"."""
    src, channels, size = args
    try:
        with open_image(src) as im:
            return image_to_uint8(im, channels, size).numpy()
    except UnidentifiedImageError:
        return "not an image"
    except FileNotFoundError:
        return "missing"
    except _DECODE_ERRORS:
        return "corrupt"


def _rows(rows: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _unreadable(index: TableIndex, bad: list[int]) -> str:
    return (f"{index.name}, column {index.column}: skipped {len(bad)} unreadable image(s) (corrupt or "
            f"truncated): rows {_rows(bad)}")


def _decode_all(index: TableIndex, channels: int, size: tuple[int, int] | None, workers: int,
                keep: bool) -> tuple[list[np.ndarray | None], list[int]]:
    """Decode every row in chunks (never all encoded bytes at once): (arrays, or None for skipped
    rows, when keep; the rows skipped as corrupt). Empty cells and cells that are no image are
    refused, naming the row."""
    from tqdm import tqdm

    out: list[np.ndarray | None] = []
    bad: list[int] = []
    bar = tqdm(total=len(index.rows), desc=f"decoding {len(index.rows)} images"
               + (f" to {size[0]}x{size[1]}" if size else ""), unit="img", leave=False, disable=None)
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(index.rows) >= 64 else None
    chunk = 64 * max(1, workers)
    try:
        for start in range(0, len(index.rows), chunk):
            for rows, cells in index.source.cells(index.column, index.rows[start:start + chunk]):
                e = _first_empty(cells)
                if e is not None:
                    raise _empty_cell(index, rows[e])
                jobs = [(_cell_input(c, index.source.base), channels, size) for c in cells.to_pylist()]
                done = list((pool.map if pool else map)(_decode_cell, jobs))
                for r, d in zip(rows, done, strict=True):
                    if isinstance(d, str) and d != "corrupt":
                        what = "no image (its bytes are not in any image format)" if d == "not an image" \
                            else "its file is missing"
                        raise ValueError(f"{index.name}: row {r} (counting from 0), column {index.column}: "
                                         f"{what}")
                    if isinstance(d, str):
                        bad.append(r)
                    out.append(d if keep and not isinstance(d, str) else None)
                bar.update(len(rows))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return out, bad


def _cache_key(index: TableIndex, channels: int, size: tuple[int, int]) -> str:
    h = hashlib.sha256(f"{DECODING}|{index.key}|{channels}|{size}|{index.classes}".encode())
    h.update(np.asarray(index.rows, dtype=np.int64).tobytes())
    h.update(np.asarray(index.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def load_table_cached(index: TableIndex, channels: int, size: tuple[int, int],
                      cache_dir: str | Path | None = None, workers: int = 2) -> ImageArrays:
    """Decode every row once (resized to size) into uint8 tensors, in the folders' cache; rows
    skipped as unreadable are named in a warning, and in the cache, so reading it warns again."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    file = cache / f"table-{_cache_key(index, channels, size)}.safetensors"
    cached = read_decoded_cache(file)
    if cached is not None:
        images, labels, meta, sizes = cached
        unread = json.loads(meta.get("unreadable", "[]"))
        if unread:
            warnings.warn(_unreadable(index, unread), VitkitWarning, stacklevel=2)
        return ImageArrays(images, labels, index.classes, sizes)
    decoded, bad = _decode_all(index, channels, size, workers, keep=True)
    if bad:
        warnings.warn(_unreadable(index, bad), VitkitWarning, stacklevel=2)
    keep = [i for i, d in enumerate(decoded) if d is not None]
    if not keep:
        raise ValueError(f"{index.name}: none of the {len(decoded)} images could be decoded")
    images, sizes = on_canvas([torch.from_numpy(decoded[i]) for i in keep])
    labels = labels_tensor([index.labels[i] for i in keep])
    write_decoded_cache(file, images, labels, {"unreadable": json.dumps(bad)}, sizes)
    return ImageArrays(images, labels, index.classes, sizes)


def probe_table(index: TableIndex, n: int = 64) -> tuple[tuple[int, int], int]:
    """Most common upright (H, W) and channel count of n rows spread over the index."""
    step = max(1, len(index.rows) // n)
    sample = index.rows[::step][:n]
    files = []
    for _, cells in index.source.cells(index.column, sample):
        files += [f for f in (_cell_input(c, index.source.base) for c in cells.to_pylist()) if f is not None]
    return probe_images(files, index.name)


def readable_only(index: TableIndex, workers: int = 2) -> TableIndex:
    """The index without the rows that fail to decode (named in one warning), so that a streamed
    pass sees every image once."""
    _, bad = _decode_all(index, 1, (8, 8), workers, keep=False)
    if bad:
        warnings.warn(_unreadable(index, bad), VitkitWarning, stacklevel=2)
    if len(bad) == len(index.rows):
        raise ValueError(f"{index.name}: none of the {len(bad)} images could be decoded")
    skip = set(bad)
    return index.subset([i for i, r in enumerate(index.rows) if r not in skip])


def streamable(index: TableIndex, cache_dir: str | Path | None = None) -> TableIndex:
    """The index with random access to its rows: a Dataset has it; parquet rows are copied once
    (encoded, the image column only) into a memory-mapped Arrow file in the cache. Empty cells are
    refused here, before training starts."""
    import pyarrow as pa

    source = index.source
    if isinstance(source, DatasetRows):  # memory-mapped: the checks read no image bytes
        start = 0
        col = source.column(index.column)
        for chunk in col.chunks if hasattr(col, "chunks") else [col]:
            e = _first_empty(chunk)
            if e is not None:
                raise _empty_cell(index, start + e)
            start += len(chunk)
        return index
    if isinstance(source, ArrowFileRows):
        return index
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = hashlib.sha256(f"{source.key()}|{index.column}".encode()).hexdigest()[:24]
    file = cache / f"table-{key}.arrow"
    if not file.is_file():
        from ..files import atomic_write

        def write(f) -> None:
            typ = source.schema.field(index.column).type
            with pa.ipc.new_file(f, pa.schema([pa.field("image", typ)])) as w:
                for rows, cells in source.cells(index.column, list(range(source.n))):
                    e = _first_empty(cells)
                    if e is not None:
                        raise _empty_cell(index, rows[e])
                    w.write_batch(pa.record_batch([cells], names=["image"]))

        atomic_write(file, write)
    return replace(index, source=ArrowFileRows(file, source.base))


class StreamingTable(torch.utils.data.Dataset):
    """Decodes each row when it is asked for (in DataLoader workers), as folder.StreamingFolder:
    resized to `size` when given, then `transform`; a row that fails to decode is replaced by
    the next good one and named in a warning. The index must be streamable()."""

    def __init__(self, index: TableIndex, channels: int, transform=None,
                 size: tuple[int, int] | None = None):
        self.index, self.channels, self.transform = index, channels, transform
        self.size = size if size is None or isinstance(size, Fit) else (int(size[0]), int(size[1]))
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.index.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        ix = self.index
        for j in range(len(self)):
            k = (i + j) % len(self)
            if k in self.bad:
                continue
            src = _cell_input(ix.source.cell(ix.column, ix.rows[k]), ix.source.base)
            img = _decode_cell((src, self.channels, self.size)) if src is not None else "empty"
            if not isinstance(img, str):
                img = torch.from_numpy(img)
                return (self.transform(img) if self.transform is not None else img), label_item(ix.labels[k])
            self.bad.add(k)
            warnings.warn(f"{ix.name}: row {ix.rows[k]}, column {ix.column}: unreadable image ({img}), "
                          "skipped", VitkitWarning, stacklevel=2)
        raise ValueError(f"{ix.name}: no readable images")
