"""`vitkit embed`: features of image files with their names (.npy, .safetensors, .parquet), and nearest
neighbours of a query image by cosine similarity."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.cli import main
from vitkit.embeddings import nearest, read_embeddings, write_embeddings


@pytest.fixture
def setup(tmp_path):
    from test_probe import _opened, _tiny_digits_model

    from vitkit.data.arrays import load_digits

    opened = _opened(_tiny_digits_model(), tmp_path)
    images = load_digits()[1].images[:12, 0].numpy()
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(folder / ("sub" if i % 3 == 0 else ".") / f"d{i:02d}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return opened, folder, tmp_path


def _reference(opened, files):
    from vitkit.data.preprocess import prepare_image

    x = torch.stack([prepare_image(Image.open(f), opened.spec) for f in files])
    with torch.no_grad():
        return opened.model.forward_features(x)[:, 0].numpy()  # class token after the final norm


def test_embed_npy_and_safetensors(setup, capsys):
    opened, folder, tmp = setup
    common = ["--features.precision", "fp32", "--cache_dir", str(tmp / "cache")]
    main(["embed", str(tmp / "m"), str(folder), "--out", str(tmp / "e.npy"), *common])
    printed = capsys.readouterr()
    assert "wrote" in printed.out and "broken.png: cannot read image" in printed.err
    feats, names = np.load(tmp / "e.npy", allow_pickle=False), json.loads((tmp / "e.names.json").read_text())
    assert feats.shape == (12, 32) and len(names) == 12 and not any("broken" in n for n in names)
    np.testing.assert_allclose(feats, _reference(opened, names), atol=1e-5)
    main(["embed", str(tmp / "m"), str(folder), "--out", str(tmp / "e.safetensors"), *common])
    assert "from the cache" in capsys.readouterr().out  # same files, same model: read back
    f2, n2 = read_embeddings(tmp / "e.safetensors")
    np.testing.assert_array_equal(f2, feats)
    assert n2 == names


def test_query_prints_cosine_neighbours(setup, capsys):
    from sklearn.neighbors import NearestNeighbors

    opened, folder, tmp = setup
    query = folder / "d04.png"
    main(["embed", str(tmp / "m"), str(folder), "--query", str(query), "--top", "3",
          "--features.precision", "fp32", "--cache_dir", str(tmp / "cache"), "--out", str(tmp / "e.npy")])
    lines = capsys.readouterr().out.splitlines()
    shown = [ln.split() for ln in lines[lines.index(f"nearest to {query} (cosine similarity):") + 1:]]
    feats, names = read_embeddings(tmp / "e.npy")
    others = [i for i, n in enumerate(names) if not n.endswith("d04.png")]  # the query itself left out
    q = feats[names.index(str(query))][None]
    dist, idx = NearestNeighbors(n_neighbors=3, metric="cosine").fit(feats[others]).kneighbors(q)
    assert [s[2] for s in shown] == [names[others[i]] for i in idx[0]]
    np.testing.assert_allclose([float(s[1]) for s in shown], 1 - dist[0], atol=1e-4)


def test_nearest_and_writer_errors(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4))
    idx, sim = nearest(x[2] * 3.0, x, k=2)  # scale does not matter for cosine
    assert idx[0, 0] == 2 and sim[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown format .csv"):
        write_embeddings(tmp_path / "e.csv", x, [str(i) for i in range(6)])
    with pytest.raises(ValueError, match="6 embeddings but 5 names"):
        write_embeddings(tmp_path / "e.npy", x, [str(i) for i in range(5)])


def test_embed_command_errors(setup, capsys):
    _, folder, tmp = setup
    cases = [([], "nothing to do"), (["--query", str(tmp / "nope.png")], "nope.png: no such file"),
             (["--out", str(tmp / "e.txt")], "unknown format .txt")]
    for args, message in cases:
        with pytest.raises(SystemExit):
            main(["embed", str(tmp / "m"), str(folder), "--cache_dir", str(tmp / "cache"), *args])
        assert message in capsys.readouterr().err


def test_embed_parquet_equals_npy(setup, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    _, folder, tmp = setup
    common = ["--features.precision", "fp32", "--cache_dir", str(tmp / "cache")]
    main(["embed", str(tmp / "m"), str(folder), "--out", str(tmp / "e.npy"), *common])
    main(["embed", str(tmp / "m"), str(folder), "--out", str(tmp / "e.parquet"), *common])
    assert f"wrote {tmp / 'e.parquet'}" in capsys.readouterr().out
    feats, names = read_embeddings(tmp / "e.npy")
    got, got_names = read_embeddings(tmp / "e.parquet")
    np.testing.assert_array_equal(got, feats)
    assert got.dtype == np.float32 and got_names == names
    schema = pq.read_schema(tmp / "e.parquet")
    assert schema.field("name").type == pa.string()
    assert schema.field("features").type == pa.list_(pa.float32(), 32)  # fixed size: D = 32
    assert pq.read_metadata(tmp / "e.parquet").num_rows == 12
    assert not [p for p in tmp.iterdir() if p.name.endswith(".tmp")]  # written through a temporary file


def test_parquet_errors_are_one_line(tmp_path, monkeypatch, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"file": ["a"], "features": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2))}),
                   other)
    variable = tmp_path / "variable.parquet"
    pq.write_table(pa.table({"name": ["a"], "features": [[1.0, 2.0]]}), variable)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    for path, why in ((other, "no column name"), (variable, "expected a fixed-size list of float32"),
                      (broken, "not a readable parquet file")):
        with pytest.raises(ValueError) as err:
            read_embeddings(path)
        assert str(err.value).startswith(str(path)) and why in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    with pytest.raises(ValueError, match=r"needs pyarrow: pip install 'vitkit\[parquet\]'"):
        write_embeddings(tmp_path / "e.parquet", np.zeros((1, 2)), ["a"])
    with pytest.raises(SystemExit):  # refused before the model is opened
        main(["embed", "no-model", "no-images", "--out", str(tmp_path / "e.parquet")])
    err = capsys.readouterr().err.strip()
    assert err == (f"vitkit: error: {tmp_path / 'e.parquet'}: .parquet needs pyarrow: "
                   "pip install 'vitkit[parquet]'")
