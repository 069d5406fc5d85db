"""Every data format, read from small files the tests write, and bad input handled clearly."""

import gzip
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data.arrays import load_cifar, load_digits, load_mnist, read_idx
from vitkit.data.folder import probe, scan_folder
from vitkit.data.pipeline import DataConfig, array_batches, load_data
from vitkit.data.preprocess import InputSpec, prepare_image, to_mode


def test_digits_split_is_fixed_and_stratified():
    tr, te = load_digits()
    tr2, te2 = load_digits()
    assert len(tr) + len(te) == 1797 and len(te) == 360
    assert torch.equal(te.images, te2.images) and torch.equal(tr.labels, tr2.labels)
    counts = torch.bincount(te.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert tr.images.shape[1:] == (1, 8, 8) and tr.images.dtype == torch.uint8
    assert tr.images.max() == 255


def _write_cifar(root, n_train=20, n_test=10, classes=3, key="labels", meta=True):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)

    def batch(path, n):
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             key.encode(): [int(i % classes) for i in range(n)]}
        path.write_bytes(pickle.dumps(d, protocol=2))
        return d
    if key == "labels":
        batches = [batch(root / f"data_batch_{i}", n_train) for i in range(1, 6)]
        batch(root / "test_batch", n_test)
        if meta:
            (root / "batches.meta").write_bytes(pickle.dumps(
                {b"label_names": [b"cat", b"dog", b"emu"]}, protocol=2))
    else:
        batches = [batch(root / "train", n_train)]
        batch(root / "test", n_test)
    return batches


def test_cifar10_python_batches(tmp_path):
    batches = _write_cifar(tmp_path / "c10")
    train, test = load_cifar(tmp_path / "c10")
    assert train.images.shape == (100, 3, 32, 32) and len(test) == 10
    assert train.classes == ["cat", "dog", "emu"]
    want = batches[0][b"data"][1].reshape(3, 32, 32)
    assert np.array_equal(train.images[1].numpy(), want)


def test_cifar100_python_batches(tmp_path):
    _write_cifar(tmp_path / "c100", key="fine_labels", classes=5)
    train, test = load_cifar(tmp_path / "c100")
    assert len(train) == 20 and train.labels.max() == 4


class Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/vitkit-evil-marker",))


def test_cifar_batch_with_code_is_refused(tmp_path):
    import os
    root = tmp_path / "evil"
    _write_cifar(root)
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}))
    if os.path.exists("/tmp/vitkit-evil-marker"):
        os.unlink("/tmp/vitkit-evil-marker")
    with pytest.raises(ValueError, match="data_batch_1: not a CIFAR python batch.*posix.system|system"):
        load_cifar(root)
    assert not os.path.exists("/tmp/vitkit-evil-marker")


def _idx_bytes(arr):
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    for prefix, n in [("train", 12), ("t10k", 5)]:
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for stem, arr in [(f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)]:
            data = _idx_bytes(arr)
            if gz:
                (tmp_path / (stem + ".gz")).write_bytes(gzip.compress(data))
            else:
                (tmp_path / stem).write_bytes(data)
    train, test = load_mnist(tmp_path, fashion=True)
    assert train.images.shape == (12, 1, 28, 28) and len(test) == 5
    assert train.classes[0] == "T-shirt/top"


def test_truncated_idx_is_a_clear_error(tmp_path):
    p = tmp_path / "x-idx1-ubyte"
    p.write_bytes(_idx_bytes(np.zeros(10, np.uint8))[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)


def _img(mode, size=(12, 10)):
    rng = np.random.default_rng(len(mode))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    rgb = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8), "RGB")
    return rgb.convert(mode) if mode != "RGB" else rgb


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "I;16", "CMYK", "1"])
def test_every_image_mode_converts(mode):
    img = _img(mode)
    for channels in (1, 3):
        out = to_mode(img, channels)
        assert out.mode == ("L" if channels == 1 else "RGB")
    spec = InputSpec((16, 16), 3, [0.5] * 3, [0.5] * 3)
    x = prepare_image(img, spec)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32


def test_sixteen_bit_scaled_not_clipped():
    arr = np.full((4, 4), 60000, np.uint16)
    arr[0, 0] = 0
    out = np.asarray(to_mode(Image.fromarray(arr), 1))
    assert out.max() == 255 and out.min() == 0


def _folder(root, classes=("a", "b"), n=6, size=(16, 16), mode="RGB"):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _img(mode, size).save(root / c / f"{i}.png")
    return root


def test_folder_with_split_and_cache(tmp_path, capsys):
    root = _folder(tmp_path / "imgs", n=10, mode="L")
    cfg = DataConfig(dataset="folder", path=str(root), val_split=0.2, cache_dir=str(tmp_path / "cache"))
    d = load_data(cfg)
    assert d.spec.channels == 1 and d.spec.image_size == (16, 16)
    assert len(d.train) == 16 and len(d.val) == 4 and d.classes == ["a", "b"]
    assert any("taken from the data" in n for n in d.notes)
    cached = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(cached) == 1
    d2 = load_data(cfg)  # from the cache
    assert torch.equal(d2.train.images, d.train.images)


def test_folder_with_separate_val_and_channels(tmp_path):
    tr = _folder(tmp_path / "train", n=4, mode="P")
    va = _folder(tmp_path / "val", n=2, mode="RGBA")
    d = load_data(DataConfig(dataset="folder", path=str(tr), val_path=str(va), image_size=8,
                             cache_dir=str(tmp_path / "c")))
    assert d.train.images.shape == (8, 3, 8, 8) and len(d.val) == 4


def test_large_images_stream(tmp_path):
    root = _folder(tmp_path / "big", n=3, size=(80, 70))
    d = load_data(DataConfig(dataset="folder", path=str(root), val_split=0.34, image_size=32, cache="never"))
    assert not d.in_memory
    x, y = d.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8


def test_bad_files_are_skipped_and_named(tmp_path):
    root = _folder(tmp_path / "imgs", n=5)
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8garbage")
    good = (root / "b" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = load_data(DataConfig(dataset="folder", path=str(root), val_split=0.2,
                                 cache_dir=str(tmp_path / "c")))
    text = " ".join(str(x.message) for x in w)
    assert "notes.txt" in text and "corrupt.jpg" in text and "truncated.png" in text
    assert len(d.train) + len(d.val) == 10


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope: no such directory"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no class subdirectories"):
        scan_folder(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        scan_folder(tmp_path / "empty")


def test_probe_finds_gray(tmp_path):
    root = _folder(tmp_path / "g", n=2, mode="L", size=(20, 10))
    assert probe(scan_folder(root)) == ((10, 20), 1)


def test_array_batches_shard_the_global_batch():
    tr, _ = load_digits()
    whole = [y for _, y in array_batches(tr, 64, epoch=3, seed=1)]
    r0 = [y for _, y in array_batches(tr, 64, epoch=3, seed=1, rank=0, world=2)]
    r1 = [y for _, y in array_batches(tr, 64, epoch=3, seed=1, rank=1, world=2)]
    assert len(whole) == len(r0) == 1437 // 64
    for w, a, b in zip(whole, r0, r1, strict=True):
        assert torch.equal(w, torch.cat([a, b]))
    later = [y for _, y in array_batches(tr, 64, epoch=3, seed=1, start=5)]
    assert all(torch.equal(a, b) for a, b in zip(later, whole[5:], strict=True))
