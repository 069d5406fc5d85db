"""Multi-label sets as users have them: a label column holding several labels per image (CSV
text separated by ";" or ",", a tags column separated by spaces, JSON lists, parquet lists,
`datasets`' Sequence(ClassLabel)) reads as the same multi-hot labels, trains the multi-label
objective and is evaluated with mAP."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_multilabel import TAGS, shapes

from vitkit.cli import main
from vitkit.data.pipeline import DataConfig
from vitkit.plan import load_data

N = 96


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """N shape images saved as PNG under root/images, and their tag lists."""
    root = tmp_path_factory.mktemp("tagged")
    arrays = shapes(N, 3)
    (root / "images").mkdir()
    rows = []
    for i in range(N):
        name = f"images/{i:03d}.png"
        Image.fromarray(arrays.images[i].permute(1, 2, 0).numpy()).save(root / name)
        rows.append((name, [TAGS[k] for k in range(len(TAGS)) if arrays.labels[i, k]]))
    return root, rows, arrays


def _csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def _sources(root: Path, rows) -> dict[str, tuple[str, Path]]:
    """The same tags in every layout: (dataset, path)."""
    out = {}
    out["csv ;"] = ("csv", _csv(root / "semi.csv", ["file", "labels"], [[f, ";".join(t)] for f, t in rows]))
    out["csv ,"] = ("csv", _csv(root / "comma.csv", ["image", "label"], [[f, ", ".join(t)] for f, t in rows]))
    spaced = [[f, " ".join(t.replace(" ", "_") for t in tags)] for f, tags in rows]
    out["tsv tags"] = ("csv", _csv(root / "tags.tsv", ["file_name", "tags"], spaced, delimiter="\t"))
    with open(root / "lists.jsonl", "w") as f:
        for file, tags in rows:
            f.write(json.dumps({"file_name": file, "labels": tags}) + "\n")
    out["jsonl"] = ("csv", root / "lists.jsonl")
    cells = [{"bytes": (root / f).read_bytes(), "path": Path(f).name} for f, _ in rows]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(cells, image_type), "labels": pa.array([t for _, t in rows])})
    pq.write_table(table, root / "lists.parquet")
    out["parquet lists"] = ("hf", root / "lists.parquet")
    ids = [[TAGS.index(t) for t in tags] for _, tags in rows]
    features = {"image": {"_type": "Image"},
                "labels": {"_type": "Sequence", "feature": {"_type": "ClassLabel", "names": TAGS}}}
    table = pa.table({"image": pa.array(cells, image_type), "labels": pa.array(ids, pa.list_(pa.int64()))})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, root / "classlabels.parquet")
    out["parquet Sequence(ClassLabel)"] = ("hf", root / "classlabels.parquet")
    return out


def _all(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image and label of train and val, in the order of the images' bytes (splits and
    sources may order them differently)."""
    x = torch.cat([data.train.images, data.val.images])
    y = torch.cat([data.train.labels, data.val.labels])
    order = sorted(range(len(x)), key=lambda i: x[i].numpy().tobytes())
    return x[order], y[order]


def test_every_layout_gives_the_same_multi_hot_labels(tagged, tmp_path):
    root, rows, arrays = tagged
    for name, (dataset, path) in _sources(root, rows).items():
        data = load_data(DataConfig(dataset=dataset, path=str(path), cache_dir=str(tmp_path / name),
                                    workers=0, val_split=0.25, image_size=16))
        expect = TAGS if name != "tsv tags" else [t.replace(" ", "_") for t in TAGS]
        assert sorted(data.classes) == sorted(expect), name
        x, y = _all(data)
        assert y.shape == (N, len(TAGS)) and data.train.labels.ndim == 2, name
        # columns in the data's class order, compared with the drawn tags by name
        truth = {arrays.images[i].numpy().tobytes(): arrays.labels[i] for i in range(N)}
        cols = [expect.index(c) for c in data.classes]
        for xi, yi in zip(x, y, strict=True):
            assert torch.equal(yi.to(torch.uint8), truth[xi.numpy().tobytes()][cols]), name


def test_a_single_label_column_stays_single_label(tagged, tmp_path):
    root, rows, _ = tagged
    path = _csv(root / "single.csv", ["file", "label"], [[f, t[0]] for f, t in rows])
    data = load_data(DataConfig(dataset="csv", path=str(path), cache_dir=str(tmp_path), workers=0,
                                image_size=16))
    assert data.train.labels.ndim == 1


def test_an_empty_tag_cell_is_named(tagged, tmp_path, capsys):
    root, rows, _ = tagged
    table = [[f, ";".join(t)] for f, t in rows]
    table[5][1] = " ; "
    path = _csv(tmp_path / "t.csv", ["file", "labels"], table)
    with pytest.raises(SystemExit) as e:
        main(["train", "--data.dataset", "csv", "--data.path", str(path), "--run.out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "row 6" in err and "empty" in err
    assert not (tmp_path / "run").exists()


def test_train_on_a_csv_of_tags_then_evaluate_on_parquet_with_map(tagged, tmp_path, capsys):
    root, rows, _ = tagged
    sources = _sources(root, rows)
    run = tmp_path / "run"
    main(["train", "--data.dataset", "csv", "--data.path", str(sources["csv ;"][1]),
          "--data.image_size", "16", "--data.cache_dir", str(tmp_path), "--model.patch_size", "4",
          "--model.hidden_size", "32", "--model.num_layers", "2", "--model.num_heads", "2",
          "--model.mlp_size", "64", "--model.stem", "patch",
          "--augment.crop", "none", "--run.epochs", "2", "--run.batch_size", "32", "--run.progress", "false",
          "--run.precision", "fp32", "--run.out", str(run)])
    printed = capsys.readouterr().out
    assert "mAP" in printed
    meta = json.loads((run / "config.json").read_text())
    assert 0 < meta["multilabel"]["threshold"] < 1 and meta["classes"] == sorted(TAGS)
    main(["evaluate", str(run), "--data.dataset", "hf", "--data.path", str(sources["parquet lists"][1]),
          "--data.cache_dir", str(tmp_path), "--out", str(tmp_path / "eval"), "--json", "true"])
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == N and 0 <= res["mAP"] <= 1 and set(res["per_tag_ap"]) == set(TAGS)
    assert np.isfinite(res["micro_f1"]) and np.isfinite(res["macro_f1"])
