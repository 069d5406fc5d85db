"""--json true: one JSON document alone on stdout, for every command that has the option
(predict, evaluate, probe, embed, info, bench); progress and notes go to stderr."""

import json

import numpy as np
import pytest
from helpers import TINY_ARGS
from PIL import Image

from vitkit.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("json")
    main(["train", *TINY_ARGS, "--data.per_class", "20", "--run.epochs", "1", "--run.out", str(root / "run")])
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(images / f"{i}.png")
    return root / "run", images


def _json_stdout(capsys, argv) -> object:
    capsys.readouterr()
    main(argv)
    out = capsys.readouterr().out
    return json.loads(out)  # fails on any line that is not part of the document


def test_predict(run, capsys):
    res = _json_stdout(capsys, ["predict", str(run[0]), str(run[1]), "--json", "true", "--topk", "2"])
    assert len(res) == 4 and all(len(r["top"]) == 2 for r in res)


def test_evaluate(run, tmp_path, capsys):
    res = _json_stdout(capsys, ["evaluate", str(run[0]), "--out", str(tmp_path), "--json", "true"])
    assert res["images"] == 360 and 0 <= res["top1"] <= 1
    assert json.loads((tmp_path / "eval.json").read_text())["top1"] == res["top1"]


def test_probe(run, tmp_path, capsys):
    res = _json_stdout(capsys, ["probe", str(run[0]), "--shots", "[1]", "--draws", "1", "--linear", "false",
                                "--cache_dir", str(tmp_path), "--json", "true",
                                "--out", str(tmp_path / "p.json")])
    assert res == json.loads((tmp_path / "p.json").read_text())
    assert "knn" in res


def test_embed(run, tmp_path, capsys):
    out = tmp_path / "e.npy"
    res = _json_stdout(capsys, ["embed", str(run[0]), str(run[1]), "--out", str(out), "--query",
                                str(run[1] / "0.png"), "--top", "2", "--cache_dir", str(tmp_path),
                                "--json", "true"])
    assert res["images"] == 4 and res["written"][0] == str(out) and len(res["nearest"]) == 2
    assert np.load(out).shape == (4, res["features"])


def test_info(capsys):
    res = _json_stdout(capsys, ["info", "--json", "true"])
    b16 = next(r for r in res["variants"] if r["variant"] == "B/16")
    assert res["image_size"] == 224 and b16["layers"] == 12 and b16["hidden_size"] == 768
