"""Shards written by other tools (webdataset's TarWriter and ShardWriter, no index.json) read as
they are: the same uint8 tensors and labels as the same image files in a class folder, exact
epochs over the samples that have both an image and a label."""

import functools
import http.server
import io
import tarfile
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data.folder import StreamingFolder, scan_folder
from vitkit.data.pipeline import DataConfig
from vitkit.data.shards import ShardStream, open_shards, write_shards
from vitkit.notices import VitkitWarning
from vitkit.plan import load_data

wds = pytest.importorskip("webdataset")

NAMES = ["cat", "dog", "fish"]
SIZES = [(20, 24), (32, 16), (18, 18), (24, 30), (16, 40)]
FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "JPEG": "JPEG", "png": "PNG", "webp": "WEBP"}
MIXED_EXTS = ["jpg", "png", "jpeg", "webp", "JPEG"]
FLAVOURS = ["jpg-cls", "png-txt", "webp-json", "mixed"]


def encoded(i: int, ext: str) -> bytes:
    """Image i (random RGB pixels, one of several sizes) encoded once: the same bytes go into
    the folder and the tar, so both decode alike."""
    h, w = SIZES[i % len(SIZES)]
    pixels = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=FORMATS[ext])
    return buf.getvalue()


def sample(flavour: str, i: int) -> tuple[str, str, int, dict]:
    """(key, image extension, class, label members as webdataset's writer takes them)."""
    k = i % 3
    if flavour == "jpg-cls":
        return f"{i:06d}", "jpg", k, {"cls": k}
    if flavour == "png-txt":
        return f"{i:06d}", "png", k, {"txt": NAMES[k]}
    if flavour == "webp-json":
        return f"{i:06d}", "webp", k, {"json": {"label": k, "width": SIZES[i % len(SIZES)][1]}}
    label = [{"cls": k}, {"json": {"label": k}}, {"txt": f"{k}\n"}][i // 3 % 3]
    return f"{i:06d}", MIXED_EXTS[i % len(MIXED_EXTS)], k, label


def class_names(flavour: str) -> list[str]:
    return NAMES if flavour == "png-txt" else ["0", "1", "2"]


def write_set(flavour: str, ids: range, shard_dir, folder, maxcount: int = 5) -> None:
    """The samples `ids` as webdataset shards (maxcount each) and as folder/<class>/<key>.<ext>."""
    shard_dir.mkdir(parents=True)
    with wds.ShardWriter(str(shard_dir / "shard-%06d.tar"), maxcount=maxcount, verbose=0) as sink:
        for i in ids:
            key, ext, k, labels = sample(flavour, i)
            data = encoded(i, ext)
            sink.write({"__key__": key, ext: data, **labels})
            d = folder / class_names(flavour)[k]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{key}.{ext}").write_bytes(data)


@pytest.fixture(scope="module", params=FLAVOURS)
def foreign(request, tmp_path_factory):
    """12 training and 6 validation images of 3 classes, as webdataset shards and as folders."""
    root = tmp_path_factory.mktemp(request.param)
    write_set(request.param, range(12), root / "train", root / "folder-train")
    write_set(request.param, range(100, 106), root / "val", root / "folder-val")
    return request.param, root


def keyed(ds: ShardStream) -> dict[str, tuple[torch.Tensor, int]]:
    """Every sample of an evaluation stream by its key (one process reads them in order)."""
    keys = [k for k, _, _ in ds.samples()]
    items = list(ds)
    assert len(keys) == len(items) == ds.shards.total
    return dict(zip(keys, items, strict=True))


def folder_keyed(root, classes, size=None) -> dict[str, tuple[torch.Tensor, int]]:
    index = scan_folder(root, classes)
    ds = StreamingFolder(index, 3, size=size)
    return {p.stem: ds[i] for i, p in enumerate(index.paths)}


def same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in sorted(a):
        assert torch.equal(a[key][0], b[key][0]), key
        assert a[key][1] == b[key][1], key


def test_open_shards_scans_shards_without_an_index(foreign):
    flavour, root = foreign
    assert not (root / "train" / "index.json").exists()
    shards = open_shards(str(root / "train"))
    assert shards.names == [f"shard-{i:06d}.tar" for i in range(3)] and shards.counts == [5, 5, 2]
    assert shards.classes == class_names(flavour)
    assert not list((root / "train").glob("*.json"))  # nothing written beside the shards
    for pattern in ("train/shard-{000000..000002}.tar", "train/*.tar", "train/shard-00000[0-2].tar"):
        again = open_shards(str(root / pattern))
        assert (again.total, again.counts, again.classes) == (12, [5, 5, 2], shards.classes)
        assert [again.location(i) for i in range(3)] == [shards.location(i) for i in range(3)]


@pytest.mark.parametrize("size", [None, (16, 16)])
def test_stream_gives_the_folders_tensors_and_labels(foreign, size):
    flavour, root = foreign
    shards = open_shards(str(root / "train"))
    got = keyed(ShardStream(shards, 3, size, train=False))
    same(got, folder_keyed(root / "folder-train", shards.classes, size))
    assert {tuple(x.shape[-2:]) for x, _ in got.values()} == ({size} if size else set(SIZES))


def test_load_data_gives_the_folders_images(foreign, tmp_path):
    flavour, root = foreign
    common = dict(image_size=16, channels=3)
    shards = load_data(DataConfig(dataset="shards", path=str(root / "train"), val_path=str(root / "val"),
                                  **common))
    folder = load_data(DataConfig(dataset="folder", path=str(root / "folder-train"),
                                  val_path=str(root / "folder-val"), cache_dir=str(tmp_path), **common))
    assert shards.classes == folder.classes == class_names(flavour)
    assert shards.spec.image_size == folder.spec.image_size == (16, 16)

    def bag(pairs):
        return sorted((int(y), x.numpy().tobytes()) for x, y in pairs)

    shards.train.set_epoch(0)
    assert bag(shards.train) == bag(zip(folder.train.images, folder.train.labels, strict=True))
    assert bag(shards.val) == bag(zip(folder.val.images, folder.val.labels, strict=True))
    assert len(shards.train) == 12 and len(shards.val) == 6


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_incomplete_samples_are_skipped_with_a_warning_and_not_counted(tmp_path):
    """Image i is filled with i and is in class i % 3; every 7th has no label, every 11th no image."""
    d = tmp_path / "shards"
    d.mkdir()
    with wds.ShardWriter(str(d / "part-%04d.tar"), maxcount=20, verbose=0) as sink:
        for i in range(60):
            s = {"__key__": f"s{i:03d}"}
            if i % 7 != 3:
                s["cls"] = i % 3
            if i % 11 != 5:
                s["png"] = png(i)
            sink.write(s)
    good = [i for i in range(60) if i % 7 != 3 and i % 11 != 5]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shards = open_shards(str(d))
    messages = [str(w.message) for w in caught if issubclass(w.category, VitkitWarning)]
    assert len(messages) == 2
    no_label = [i for i in range(60) if i % 7 == 3 and i % 11 != 5]
    no_image = [i for i in range(60) if i % 11 == 5 and i % 7 != 3]
    assert f"skipped {len(no_label)} sample(s) without a label" in messages[0]
    assert "part-0000.tar s003" in messages[0]
    assert f"skipped {len(no_image)} sample(s) without an image" in messages[1]
    assert "part-0000.tar s005" in messages[1]
    assert shards.total == len(good) and shards.counts == [sum(lo <= i < lo + 20 for i in good)
                                                           for lo in (0, 20, 40)]
    values = sorted(int(x[0, 0, 0]) for x, _ in ShardStream(shards, 1, train=False))
    assert values == good
    # exact epochs over what is yielded: two ranks, two workers each, batches of 4
    images = []
    for rank in (0, 1):
        ds = ShardStream(shards, 1, batch_size=8, seed=1, rank=rank, world=2, shuffle_buffer=5)
        ds.set_epoch(0)
        batches = list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2))
        assert len(batches) == len(good) // 8 and all(len(y) == 4 for _, y in batches)
        assert all(int(v) % 3 == int(c) for x, y in batches for v, c in zip(x[:, 0, 0, 0], y, strict=True))
        images += [int(v) for x, _ in batches for v in x[:, 0, 0, 0]]
    assert len(images) == len(set(images)) == len(good) // 8 * 8 and set(images) <= set(good)


def raw_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_members_group_by_key_as_webdataset_does(tmp_path):
    """The key is the path up to the first dot of the base name; a sample's first image is used;
    members of one key that are not consecutive are two samples."""
    d = tmp_path / "raw"
    d.mkdir()
    raw_tar(d / "a.tar", [
        ("set.v1/x1.jpg.json", b'{"note": 1}'), ("set.v1/x1.png", png(10)), ("set.v1/x1.cls", b"1"),
        ("set.v1/x1.PNG", png(99)),
        ("__meta__.json", b'{"label": 0}'), ("x2.seg.png", png(98)), ("x2.JPEG", png(20)),
        ("x2.json", b'{"cls": null, "target": "0"}'),
        ("x3.png", png(30)), ("x4.cls", b"0"), ("x3.cls", b"0"),
        ("x5.webp", png(50)), ("x5.txt", b"a caption"), ("x5.json", b'{"label": 2}'),
        ("x6.png", png(60)), ("x6.txt", b"-1"),
    ])
    with pytest.warns(VitkitWarning) as record:
        shards = open_shards(str(d / "a.tar"))
    text = " | ".join(str(w.message) for w in record)
    assert "a.tar x3" in text and "a.tar x6" in text and "a.tar x4" in text
    got = [(int(x[0, 0, 0]), y) for x, y in ShardStream(shards, 1, train=False)]
    assert got == [(10, 1), (20, 0), (50, 2)] and shards.classes == ["0", "1", "2"]
    assert [k for k, _, _ in ShardStream(shards, 1, train=False).samples()] == ["set.v1/x1", "x2", "x5"]


def test_class_names_from_a_classes_file(tmp_path):
    d = tmp_path / "named"
    d.mkdir()
    with wds.TarWriter(str(d / "only.tar")) as sink:
        for i in range(6):
            label = {"cls": i % 3} if i % 2 else {"txt": "dog"}
            sink.write({"__key__": f"{i:04d}", "png": png(i), **label})
    with pytest.raises(ValueError, match="mix class indices"):
        open_shards(str(d))
    (d / "classes.txt").write_text("cat\ndog\nfish\n")
    shards = open_shards(str(d))
    assert shards.classes == ["cat", "dog", "fish"]
    got = [(int(x[0, 0, 0]), y) for x, y in ShardStream(shards, 1, train=False)]
    assert got == [(0, 1), (1, 1), (2, 1), (3, 0), (4, 1), (5, 2)]
    assert open_shards(str(d / "*.tar")).classes == ["cat", "dog", "fish"]
    (d / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match="not one of the 2 classes"):
        open_shards(str(d))


def test_vitkit_shards_read_as_before_and_their_scan_agrees(tmp_path):
    src = tmp_path / "images"
    for i in range(20):
        (src / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(src / f"c{i % 3}" / f"{i:03d}.png")
    out = write_shards(scan_folder(src), tmp_path / "out", shard_size=6)
    indexed = open_shards(str(out))
    scanned = open_shards(str(out / "shard-*.tar"))
    assert indexed.classes == ["c0", "c1", "c2"] and scanned.classes == ["0", "1", "2"]
    assert indexed.counts == scanned.counts == [6, 6, 6, 2]
    assert [indexed.location(i) for i in range(4)] == [scanned.location(i) for i in range(4)]

    def read(s):
        return [(int(x[0, 0, 0]), y) for x, y in ShardStream(s, 1, train=False)]

    assert read(indexed) == read(scanned) and sorted(v for v, _ in read(indexed)) == list(range(20))


def test_url_prefix_pattern_and_pipe_without_an_index(tmp_path):
    d = tmp_path / "web"
    write_set("png-txt", range(12), d, tmp_path / "folder")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(d)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        listed = open_shards(url)  # from the server's HTML listing
        braced = open_shards(url + "/shard-{000000..000002}.tar")
        piped = open_shards(f"pipe:cat {d}/shard-{{000000..000002}}.tar")
        for s in (listed, braced, piped):
            assert (s.counts, s.classes) == ([5, 5, 2], NAMES)
        expected = keyed(ShardStream(open_shards(str(d)), 3, train=False))
        same(keyed(ShardStream(listed, 3, train=False)), expected)
        same(keyed(ShardStream(piped, 3, train=False)), expected)
    finally:
        server.shutdown()
        server.server_close()


def test_missing_shards_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no index.json and no .tar shards"):
        open_shards(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no shards match"):
        open_shards(str(tmp_path / "empty" / "*.tar"))
    with pytest.raises(FileNotFoundError, match="no such shard"):
        open_shards(str(tmp_path / "empty" / "s-{0..3}.tar"))
