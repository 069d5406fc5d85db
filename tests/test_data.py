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
from vitkit.data.pipeline import DataConfig, array_batches
from vitkit.data.preprocess import InputSpec, prepare_image, to_mode
from vitkit.plan import load_data


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


# ---- default image and patch sizes -----------------------------------------------------------

@pytest.mark.parametrize("size,patch", [((8, 8), 2), ((32, 32), 4), ((224, 224), 16), ((16, 16), 4),
                                        ((12, 12), 3), ((28, 28), 4), ((30, 20), 2), ((60, 60), 6)])
def test_default_patch_size_keeps_todays_choice_and_divides(size, patch):
    from vitkit.plan import default_image_size, default_patch_size

    assert default_patch_size(size) == patch
    assert default_image_size(size) == size  # these sizes need no resizing


def test_default_sizes_always_fit():
    from vitkit.plan import default_image_size, default_patch_size

    for h in range(1, 81):
        for w in range(1, 81):
            p = default_patch_size((h, w))
            assert h % p == 0 and w % p == 0, (h, w, p)
            H, W = default_image_size((h, w))
            assert abs(H - h) <= 8 and abs(W - w) <= 8, (h, w, H, W)
            assert max(H, W) <= 64 or max(h, w) > 64, (h, w, H, W)  # small images stay small
            P = default_patch_size((H, W))
            assert H % P == 0 and W % P == 0 and min(H, W) // P <= 16, (h, w, H, W, P)  # not patch 1 at 31
    assert default_image_size((31, 31)) == (30, 30) and default_patch_size((30, 30)) == 3
    assert default_patch_size((28, 28), stem_stride=2) == 4 and default_patch_size((8, 8), 4) == 4
    with pytest.raises(ValueError, match="no patch size divides it that is a multiple of stem stride 4"):
        default_patch_size((30, 30), stem_stride=4)


def test_prime_side_folder_is_resized_and_says_so(tmp_path):
    root = _folder(tmp_path / "p", n=4, size=(31, 31))
    d = load_data(DataConfig(dataset="folder", path=str(root), val_split=0.5, cache_dir=str(tmp_path / "c")))
    assert d.spec.image_size == (30, 30) and d.train.images.shape[-2:] == (30, 30)
    assert any("images are 31x31: resized to 30x30" in n for n in d.notes)


@pytest.mark.parametrize("size,mode,image_size,patch", [((28, 28), "L", (28, 28), 4),
                                                        ((20, 30), "RGB", (30, 20), 2),
                                                        ((31, 31), "RGB", (30, 30), 3)])
def test_folders_of_any_size_train_with_the_defaults(tmp_path, capsys, size, mode, image_size, patch):
    import json

    from vitkit.data.augment import AugmentConfig
    from vitkit.training import ModelSpec, OptimConfig, RunConfig, TrainConfig, fit

    root = _folder(tmp_path / "imgs", n=4, size=size, mode=mode)
    cfg = TrainConfig(data=DataConfig(dataset="folder", path=str(root), val_split=0.5,
                                      cache_dir=str(tmp_path / "cache")),
                      model=ModelSpec(hidden_size=16, num_layers=1, num_heads=2, mlp_size=32),
                      optim=OptimConfig(), augment=AugmentConfig(),
                      run=RunConfig(epochs=1, batch_size=4, out=str(tmp_path / "run"), progress=False,
                                    precision="fp32", device="cpu"))
    r = fit(cfg)
    assert r.status == "finished" and r.epoch == 1
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert tuple(meta["data"]["image_size"]) == image_size and meta["model"]["patch_size"] == patch
    assert f"{image_size[0]}x{image_size[1]}" in capsys.readouterr().out


# ---- evaluation data ------------------------------------------------------------------------

def _tiny_model(size, channels, classes):
    from vitkit.config import ViTConfig
    from vitkit.model import ViT

    return ViT(ViTConfig(image_size=size, patch_size=4, hidden_size=16, num_layers=1, num_heads=2,
                         mlp_size=32, num_classes=classes, num_channels=channels)).eval()


@pytest.mark.parametrize("cache", ["auto", "never"])
def test_eval_folder_counts_every_image(tmp_path, cache):
    from vitkit.data.folder import StreamingFolder
    from vitkit.data.pipeline import load_eval_data
    from vitkit.data.preprocess import image_to_uint8
    from vitkit.evaluation import evaluate_model

    root = _folder(tmp_path / "e", classes=("a", "b"), n=7, size=(20, 14), mode="RGB")
    _folder(root, classes=("c",), n=3, size=(9, 11), mode="P")
    spec = InputSpec((8, 8), 1, [0.5], [0.5])
    classes = ["c", "x", "b", "a"]  # the model's order; it knows a class the folder lacks
    ev = load_eval_data(DataConfig(dataset="folder", path=str(root), val_split=0.5, per_class=1,
                                   val_per_class=1, cache=cache, cache_dir=str(tmp_path / "cache")),
                        spec, classes)
    assert ev.count == len(ev.images) == 17 and ev.classes == classes
    assert isinstance(ev.images, StreamingFolder) == (cache == "never")
    assert "17 images" in ev.description and "no split" in ev.description and "\n" not in ev.description
    i = 3 + 7  # images follow the model's class order: c, (x), b, a
    x, y = ev.images[i] if cache == "never" else (ev.images.images[i], ev.images.labels[i])
    with Image.open(root / "a" / "0.png") as im:  # prepared exactly as for prediction
        assert torch.equal(x, image_to_uint8(im, 1, (8, 8)))
    assert int(y) == 3
    res = evaluate_model(_tiny_model(8, 1, 4), ev.images, spec, classes)
    assert res.count == 17 and res.confusion.sum(1).tolist() == [3, 0, 7, 7]


def test_eval_folder_uses_val_path_and_names_an_unknown_class(tmp_path):
    from vitkit.data.pipeline import load_eval_data

    spec = InputSpec((8, 8), 3, [0.5] * 3, [0.5] * 3)
    train = _folder(tmp_path / "train", n=2)
    val = _folder(tmp_path / "val", classes=("a",), n=5)
    cfg = DataConfig(dataset="folder", path=str(train), val_path=str(val), cache_dir=str(tmp_path / "c"))
    assert load_eval_data(cfg, spec, ["a", "b"]).count == 5
    _folder(val, classes=("zebra",), n=1)
    with pytest.raises(ValueError, match=r"class folder\(s\) zebra not among the model's 2 classes") as e:
        load_eval_data(cfg, spec, ["a", "b"])
    assert "\n" not in str(e.value)


def test_eval_builtin_sets_use_their_whole_test_split(tmp_path):
    from vitkit.data.pipeline import load_eval_data

    digits = [str(i) for i in range(10)]
    ev = load_eval_data(DataConfig(dataset="digits", val_per_class=2), InputSpec((12, 12), 3), digits[::-1])
    _, test = load_digits()
    assert ev.count == 360 and ev.images.images.shape == (360, 3, 12, 12)
    assert torch.equal(ev.images.labels, 9 - test.labels)  # mapped onto the model's class order
    _write_cifar(tmp_path / "c10")
    ev = load_eval_data(DataConfig(dataset="cifar10", path=str(tmp_path / "c10")), InputSpec((32, 32), 1),
                        ["cat", "dog", "emu", "gnu"])
    assert ev.count == 10 and ev.images.images.shape == (10, 1, 32, 32)
    with pytest.raises(ValueError, match="class.*emu not among the model's 2 classes"):
        load_eval_data(DataConfig(dataset="cifar10", path=str(tmp_path / "c10")), InputSpec((32, 32), 3),
                       ["cat", "dog"])


# ---- skipped folders and files ----------------------------------------------------------------

def test_empty_class_folder_is_skipped_with_a_warning(tmp_path):
    from vitkit.notices import VitkitWarning

    root = _folder(tmp_path / "train", classes=("ant", "dog"), n=4)
    (root / "cat").mkdir()
    (root / ".ipynb_checkpoints").mkdir()  # hidden: ignored without a word
    (root / "ant" / ".ipynb_checkpoints").mkdir()
    (root / "ant" / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes(b"hidden")
    with pytest.warns(VitkitWarning, match=r"train/cat: no images; skipped, not a class") as w:
        index = scan_folder(root)
    assert index.classes == ["ant", "dog"] and len(index.paths) == 8
    assert len(w) == 1 and "\n" not in str(w[0].message)
    with pytest.warns(VitkitWarning, match="cat: no images"):
        d = load_data(DataConfig(dataset="folder", path=str(root), val_split=0.5,
                                 cache_dir=str(tmp_path / "c")))
    assert d.classes == ["ant", "dog"]
    for name in ("ant", "dog"):
        for f in (root / name).glob("*.png"):
            f.unlink()
    with pytest.warns(VitkitWarning), pytest.raises(ValueError, match="no images found in any of its 3") as e:
        scan_folder(root)
    assert "\n" not in str(e.value)


def test_skip_warnings_are_one_line_vitkit_warnings(tmp_path):
    from vitkit.notices import VitkitWarning

    root = _folder(tmp_path / "imgs", n=5)
    (root / "a" / "notes\nsecond line.txt").write_text("not an image")
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8garbage")
    good = (root / "b" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    for cache in ("auto", "never"):  # decoded into the cache, or checked before streaming
        from vitkit.data.pipeline import load_eval_data

        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            ev = load_eval_data(DataConfig(dataset="folder", path=str(root), cache=cache,
                                           cache_dir=str(tmp_path / "c")),
                                InputSpec((16, 16), 3, [0.5] * 3, [0.5] * 3), ["a", "b"])
        assert ev.count == 10 and "2 unreadable skipped" in ev.description
        assert w and all(issubclass(x.category, VitkitWarning) for x in w)
        assert all("\n" not in str(x.message) for x in w)
        text = " ".join(str(x.message) for x in w)
        assert "notes\\nsecond line.txt" in text and "corrupt.jpg" in text and "truncated.png" in text


def test_streamed_validation_matches_vitkit_evaluate(tmp_path, capsys):
    """Streamed validation images are read as prediction reads them (whole image resized to the
    spec), so the accuracy printed during training is the one `vitkit evaluate` reports."""
    import json

    from helpers import tiny_train_config

    from vitkit.cli import main
    from vitkit.training import fit

    tr = _folder(tmp_path / "train", n=8, size=(80, 70))
    va = _folder(tmp_path / "val", n=5, size=(90, 60))
    cfg = tiny_train_config(tmp_path / "run", epochs=1, data={
        "dataset": "folder", "path": str(tr), "val_path": str(va), "image_size": 16, "cache": "never",
        "workers": 0}, run={"batch_size": 8})
    r = fit(cfg)
    main(["evaluate", str(r.run_dir), "--data.dataset", "folder", "--data.path", str(va),
          "--data.cache", "never", "--data.workers", "0", "--precision", "fp32"])
    ev = json.loads((r.run_dir / "eval.json").read_text())
    assert ev["images"] == 10
    assert ev["top1"] == r.val_acc
    assert abs(ev["loss"] - r.metrics[-1]["val_loss"]) < 1e-5
