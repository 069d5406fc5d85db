"""Hugging Face datasets and label tables: the same twelve images as a class folder, a parquet
file in the layout `datasets` writes, a save_to_disk folder, a CSV, a JSON-lines file, a folder
with metadata.csv and a Hub dataset id all decode to the same uint8 pixels and labels; bad
tables are refused in one line naming the row or column, before anything is written."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from helpers import TINY_ARGS
from PIL import Image
from test_hub import COMMIT, StandInHub

from vitkit.cli import main
from vitkit.data.pipeline import DataConfig
from vitkit.notices import VitkitWarning
from vitkit.plan import load_data

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CLASSES = ["cat", "dog", "fox"]
# (height, width) of each class's four images; the fourth is a JPEG stored 16 wide and 12 high
# with EXIF orientation 6, so upright it is 12 wide and 16 high, the most common size
SIZES = [(12, 16), (16, 12), (14, 14), (12, 16)]
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
FEATURES = {"image": {"_type": "Image"}, "label": {"names": CLASSES, "_type": "ClassLabel"}}


def _write_images(folder: Path) -> list[tuple[str, str, bytes]]:
    """(path relative to folder's parent, class, file bytes) of each image, class by class."""
    rng = np.random.default_rng(0)
    rows = []
    for c in CLASSES:
        for k, (h, w) in enumerate(SIZES):
            p = folder / c / (f"{c}{k}.jpg" if k == 3 else f"{c}{k}.png")
            p.parent.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            if k == 3:
                exif = Image.Exif()
                exif[0x0112] = 6
                im.save(p, exif=exif.tobytes(), quality=90)
            else:
                im.save(p)
            rows.append((p.relative_to(folder.parent).as_posix(), c, p.read_bytes()))
    return rows


def write_parquet(path: Path, cells: list, labels: list, features: dict | None = FEATURES,
                  image_type=IMAGE_TYPE) -> Path:
    """A parquet file as `datasets` writes one: an image struct {bytes, path}, an int64 label and
    the features in the schema's "huggingface" metadata."""
    table = pa.table({"image": pa.array(cells, image_type), "label": pa.array(labels, pa.int64())})
    if features is not None:
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=5)
    return path


def _cells(rows) -> list[dict]:
    return [{"bytes": data, "path": Path(rel).name} for rel, _, data in rows]


def _write_table(path: Path, header: list[str], rows: list[list]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, r, strict=True))) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            w.writerow(header)
            w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """The images as a class folder, and every other source of them, in the same order."""
    root = tmp_path_factory.mktemp("pets")
    rows = _write_images(root / "folder")
    labels = [CLASSES.index(c) for _, c, _ in rows]
    write_parquet(root / "data.parquet", _cells(rows), labels)
    _write_table(root / "labels.csv", ["filename", "label"], [[rel, c] for rel, c, _ in rows])
    _write_table(root / "labels.jsonl", ["path", "class"], [[rel, c] for rel, c, _ in rows])
    meta = root / "meta"
    meta.mkdir()
    for rel, _, _ in rows:  # imagefolder with metadata: the images side by side, labels in the table
        shutil.copy(root / rel, meta / Path(rel).name)
    _write_table(meta / "metadata.csv", ["file_name", "label"], [[Path(rel).name, c] for rel, c, _ in rows])
    return root, rows


SOURCES = {
    "folder": ("folder", "folder"),
    "parquet": ("hf", "data.parquet"),
    "parquet glob": ("hf", "*.parquet"),
    "csv": ("csv", "labels.csv"),
    "jsonl": ("csv", "labels.jsonl"),
    "folder with metadata.csv": ("folder", "meta"),
    "metadata.csv as a table": ("csv", "meta/metadata.csv"),
}


def _load(root: Path, dataset: str, path: str, cache_dir: Path, **options):
    return load_data(DataConfig(dataset=dataset, path=str(root / path), cache_dir=str(cache_dir),
                                val_split=0.25, workers=0, **options))


@pytest.fixture(scope="module")
def reference(pets, tmp_path_factory):
    root, _ = pets
    return _load(root, "folder", "folder", tmp_path_factory.mktemp("cache"))


def _same(data, ref) -> None:
    assert data.classes == ref.classes == CLASSES
    assert data.spec.image_size == ref.spec.image_size and data.spec.mean == ref.spec.mean
    for a, b in ((data.train, ref.train), (data.val, ref.val)):
        assert a.images.dtype == torch.uint8 and torch.equal(a.images, b.images)
        assert torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("source", list(SOURCES))
def test_every_source_decodes_to_the_same_pixels(source, pets, reference, tmp_path):
    root, _ = pets
    data = _load(root, *SOURCES[source], tmp_path)
    _same(data, reference)
    assert data.spec.image_size == (16, 12)  # the EXIF-turned JPEGs make 16x12 the common size
    assert len(data.train) == 9 and len(data.val) == 3
    again = _load(root, *SOURCES[source], tmp_path)  # from the decoded cache
    _same(again, reference)


def test_save_to_disk_folders(pets, reference, tmp_path):
    datasets = pytest.importorskip("datasets")
    root, rows = pets
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    ds = datasets.Dataset.from_dict({"image": _cells(rows), "label": [CLASSES.index(c) for _, c, _ in rows]},
                                    features=features)
    ds.save_to_disk(str(tmp_path / "one"))
    _same(_load(tmp_path, "hf", "one", tmp_path / "cache"), reference)
    # `datasets` reads the parquet file the tests write as it reads its own
    assert datasets.Dataset.from_parquet(str(root / "data.parquet")).features == features

    datasets.DatasetDict({"train": ds, "test": ds.select(range(0, 12, 4))}).save_to_disk(str(tmp_path / "dd"))
    data = _load(tmp_path, "hf", "dd", tmp_path / "cache")
    assert len(data.train) == 12 and len(data.val) == 3
    assert any("validation from split test" in n for n in data.notes)
    assert torch.equal(data.val.images, data.train.images[0::4])


@pytest.mark.parametrize("source", ["parquet", "save_to_disk", "csv"])
def test_streamed_sets_give_the_cached_pixels(source, pets, reference, tmp_path):
    root, rows = pets
    if source == "save_to_disk":
        datasets = pytest.importorskip("datasets")
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
        datasets.Dataset.from_dict({"image": _cells(rows), "label": [CLASSES.index(c) for _, c, _ in rows]},
                                   features=features).save_to_disk(str(tmp_path / "disk"))
        dataset, path, where = "hf", str(tmp_path / "disk"), tmp_path
    else:
        dataset, path = SOURCES[source]
        where = root
    data = _load(where, dataset, path, tmp_path / "cache", cache="never")
    assert not data.in_memory
    x = torch.stack([data.val[i][0] for i in range(len(data.val))])
    y = [data.val[i][1] for i in range(len(data.val))]
    assert torch.equal(x, reference.val.images) and y == reference.val.labels.tolist()


def test_labels_of_plain_columns_and_named_columns(pets, tmp_path):
    root, rows = pets
    # plain string labels, other column names, and a TSV: classes are the sorted distinct values
    _write_table(tmp_path / "t.tsv", ["picture", "species"], [[str(root / rel), c] for rel, c, _ in rows])
    data = _load(tmp_path, "csv", "t.tsv", tmp_path / "c", image_column="picture", label_column="species")
    assert data.classes == CLASSES and len(data.train) + len(data.val) == 12
    # integer labels without ClassLabel names sort as numbers
    labels = [[2, 10, 7][CLASSES.index(c)] for _, c, _ in rows]
    write_parquet(tmp_path / "n.parquet", _cells(rows), labels, features=None)
    data = _load(tmp_path, "hf", "n.parquet", tmp_path / "c")
    assert data.classes == ["2", "7", "10"]


def test_corrupt_images_are_skipped_with_the_folder_warning(pets, tmp_path):
    root, rows = pets
    cells = _cells(rows)
    cells[4] = {"bytes": cells[4]["bytes"][:60], "path": "cut.png"}  # a PNG cut short
    write_parquet(tmp_path / "t.parquet", cells, [CLASSES.index(c) for _, c, _ in rows])
    cut = tmp_path / "cut.png"
    cut.write_bytes(rows[4][2][:60])
    table = [[str(root / rel), c] for rel, c, _ in rows]
    table[4][0] = str(cut)
    _write_table(tmp_path / "t.csv", ["file", "label"], table)
    for dataset, path, named in (("hf", "t.parquet", "column image: skipped 1 unreadable image(s)"),
                                 ("csv", "t.csv", "cut.png")):
        for _ in range(2):  # decoding, then reading the cache: the same warning
            with pytest.warns(VitkitWarning) as caught:
                data = _load(tmp_path, dataset, path, tmp_path / "cache")
            said = [str(w.message) for w in caught if issubclass(w.category, VitkitWarning)]
            assert len(said) == 1 and named in said[0] and "\n" not in said[0]
            assert len(data.train) + len(data.val) == 11


# ---- a Hub dataset id, served from 127.0.0.1 ------------------------------------------------

class StandInDatasetHub(StandInHub):
    """What datasets.load_dataset asks of the Hub for a repository of parquet files: the README,
    repository info, the file tree, and HEAD/GET of /datasets/{repo}/resolve/{revision}/{file}."""

    def answer(self, h: BaseHTTPRequestHandler, body: bool):
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        parts = path.strip("/").split("/")
        api = parts[:2] == ["api", "datasets"]
        files = self.repos.get("/".join(parts[2:4] if api else parts[1:3]))
        if files is None:
            return self.send(h, 404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        if api and (parts[4:] or ["revision"])[0] == "revision":
            info = {"id": "/".join(parts[2:4]), "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]}
            return self.send_json(h, info, body)
        if api and parts[4] == "tree":  # one level below the folder asked for
            under = "/".join(parts[6:])
            entries: dict[str, dict] = {}
            for name, data in files.items():
                if under and not name.startswith(under + "/"):
                    continue
                rest = name[len(under) + 1 if under else 0:].split("/")
                if len(rest) > 1:
                    d = "/".join([p for p in (under,) if p] + rest[:1])
                    entries[d] = {"type": "directory", "path": d, "oid": "0" * 40}
                else:
                    entries[name] = {"type": "file", "path": name, "size": len(data),
                                     "oid": hashlib.sha1(data).hexdigest()}
            return self.send_json(h, list(entries.values()), body)
        name = "/".join(parts[5:])
        if api or parts[0] != "datasets" or parts[3:4] != ["resolve"] or name not in files:
            return self.send(h, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, body)
        data = files[name]
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                   "Content-Type": "application/octet-stream"}
        return self.send(h, 200, data, headers, body)


# `datasets` reads its endpoint, cache and offline switch when it is imported: each phase runs in
# a fresh interpreter with its own environment
HUB_SCRIPT = """
import json, sys, torch
from vitkit.data.pipeline import DataConfig
from vitkit.plan import load_data
out, cache = sys.argv[1], sys.argv[2]
d = load_data(DataConfig(dataset="hf", path="someuser/tiny-pets", cache_dir=cache, workers=0))
torch.save({"train": d.train.images, "train_labels": d.train.labels, "val": d.val.images,
            "val_labels": d.val.labels, "classes": d.classes, "notes": d.notes}, out + ".pt")
try:
    load_data(DataConfig(dataset="hf", path="someuser/not-there", cache_dir=cache))
    error = None
except ValueError as e:
    error = str(e)
json.dump({"error": error}, open(out + ".json", "w"))
"""


def _hub_phase(tmp_path: Path, name: str, env: dict) -> tuple[dict, dict]:
    out = tmp_path / name
    done = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(out), str(tmp_path / f"cache-{name}")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(f"{out}.pt"), json.loads(Path(f"{out}.json").read_text())


def test_hub_dataset_id_downloads_then_reads_the_cache_offline(pets, tmp_path):
    pytest.importorskip("datasets")
    root, rows = pets
    labels = [CLASSES.index(c) for _, c, _ in rows]
    repo = tmp_path / "repo"  # as the Hub holds it; also a local folder of parquet files
    write_parquet(repo / "data" / "train-00000-of-00001.parquet", _cells(rows), labels)
    write_parquet(repo / "data" / "test-00000-of-00001.parquet", _cells(rows)[1::4], labels[1::4])
    (repo / "README.md").write_text("# tiny pets\n")
    files = {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}
    local = load_data(DataConfig(dataset="hf", path=str(repo), cache_dir=str(tmp_path / "c"), workers=0))
    assert len(local.train) == 12 and len(local.val) == 3

    hub = StandInDatasetHub({"someuser/tiny-pets": files})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_TELEMETRY="1")
    try:
        online, said = _hub_phase(tmp_path, "online", env)
    finally:
        hub.stop()
    fetched = sorted(p.rsplit("/", 1)[1] for m, p in hub.requests if m == "GET" and "/resolve/" in p)
    assert "train-00000-of-00001.parquet" in fetched and "test-00000-of-00001.parquet" in fetched
    assert "someuser/not-there" in said["error"] and "\n" not in said["error"]

    offline, said = _hub_phase(tmp_path, "offline", {**env, "HF_HUB_OFFLINE": "1",
                                                     "HF_DATASETS_OFFLINE": "1"})
    assert "offline" in said["error"] and "\n" not in said["error"]
    for got in (online, offline):
        assert got["classes"] == CLASSES
        assert torch.equal(got["train"], local.train.images) and torch.equal(got["val"], local.val.images)
        assert torch.equal(got["train_labels"], local.train.labels)
        assert torch.equal(got["val_labels"], local.val.labels)
        assert any("validation from split test" in n for n in got["notes"])


# ---- bad input: one line naming the row or column, nothing written ------------------------------

def _fail(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    _, err = capsys.readouterr()
    return e.value.code, err.strip()


def _case(kind: str, root: Path, rows, tmp: Path) -> tuple[list[str], list[str]]:
    """(the data options, what the error must name) of one kind of bad input."""
    table = [[str(root / rel), c] for rel, c, _ in rows]
    labels = [CLASSES.index(c) for _, c, _ in rows]
    if kind == "missing column":
        path = _write_table(tmp / "t.csv", ["picture", "label"], table)
        return ["csv", str(path)], ["no image column", "the columns are picture, label"]
    if kind == "named column missing":
        path = write_parquet(tmp / "t.parquet", _cells(rows), labels)
        return ["hf", str(path), "--data.label_column", "species"], ["no label column species",
                                                                       "the columns are image, label"]
    if kind == "label outside the ClassLabel names":
        path = write_parquet(tmp / "t.parquet", _cells(rows), labels[:7] + [5] + labels[8:])
        return ["hf", str(path)], ["row 7 (counting from 0), column label",
                                   "label 5 is outside the 3 ClassLabel names"]
    if kind == "missing file":
        table[4][0] = "gone/cat9.png"
        path = _write_table(tmp / "t.csv", ["file", "label"], table)
        return ["csv", str(path)], ["row 5 (line 6)", "gone/cat9.png: no such file"]
    if kind == "empty label":
        table[2][1] = ""
        path = _write_table(tmp / "t.jsonl", ["image", "label"], table)
        return ["csv", str(path)], ["row 3 (line 3)", "empty label cell"]
    if kind == "cell that is not an image":
        cells = _cells(rows)
        cells[6] = {"bytes": b"not an image at all", "path": "x.png"}
        path = write_parquet(tmp / "t.parquet", cells, labels)
        return ["hf", str(path)], ["row 6 (counting from 0), column image", "not in any image format"]
    if kind == "empty cell":
        cells = _cells(rows)
        cells[3] = None
        path = write_parquet(tmp / "t.parquet", cells, labels)
        return ["hf", str(path)], ["row 3 (counting from 0), column image", "the cell is empty"]
    if kind == "column that holds no images":
        path = write_parquet(tmp / "t.parquet", list(range(12)), labels, features=None, image_type=pa.int64())
        return ["hf", str(path)], ["column image holds int64, not images"]
    if kind == "empty table":
        path = _write_table(tmp / "t.csv", ["file", "label"], [])
        return ["csv", str(path)], ["t.csv: no rows"]
    if kind == "empty parquet":
        path = write_parquet(tmp / "t.parquet", [], [])
        return ["hf", str(path)], ["t.parquet: no rows"]
    raise AssertionError(kind)


BAD = ["missing column", "named column missing", "label outside the ClassLabel names", "missing file",
       "empty label", "cell that is not an image", "empty cell", "column that holds no images", "empty table",
       "empty parquet"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_tables_are_one_line_before_training(kind, pets, tmp_path, capsys):
    root, rows = pets
    data, names = _case(kind, root, rows, tmp_path)
    out = tmp_path / "run"
    code, err = _fail(["train", *TINY_ARGS, "--data.dataset", data[0], "--data.path", *data[1:],
                       "--data.cache_dir", str(tmp_path / "cache"), "--run.out", str(out)], capsys)
    assert code == 2 and err.startswith("vitkit: error: ") and len(err.splitlines()) == 1, err
    assert all(n in err for n in names), err
    assert not out.exists()


def test_hf_without_datasets_names_the_extra(tmp_path, capsys, monkeypatch):
    (tmp_path / "disk").mkdir()
    (tmp_path / "disk" / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    code, err = _fail(["train", "--data.dataset", "hf", "--data.path", str(tmp_path / "disk"),
                       "--run.out", str(tmp_path / "run")], capsys)
    assert code == 2 and "pip install 'vitkit[hf]'" in err and len(err.splitlines()) == 1


# ---- end to end ---------------------------------------------------------------------------

def test_train_on_a_csv_then_evaluate_on_parquet(pets, tmp_path, capsys):
    root, _ = pets
    run = tmp_path / "run"
    cache = ["--data.cache_dir", str(tmp_path / "cache")]
    main(["train", *TINY_ARGS, "--data.dataset", "csv", "--data.path", str(root / "labels.csv"),
          "--data.val_split", "0.25", *cache, "--run.epochs", "1", "--run.out", str(run)])
    capsys.readouterr()
    main(["evaluate", str(run), "--data.dataset", "hf", "--data.path", str(root / "data.parquet"), *cache,
          "--out", str(tmp_path / "eval"), "--json", "true"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 12 and set(summary["per_class"]) == set(CLASSES)
    assert "12 images of" in summary["data"] and "every one" in summary["data"]
    main(["evaluate", str(run), "--out", str(tmp_path / "eval2"), "--json", "true"])  # the run's own split
    assert json.loads(capsys.readouterr().out)["images"] == 3
