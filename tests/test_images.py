"""Images as they were taken: every reader turns a photo upright by its EXIF orientation; links
that lead nowhere are skipped as unreadable images; the unreadable-image warning is given
again when decoded images or features come from the cache."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_
from helpers import TINY_ARGS
from PIL import Image, ImageOps

from vitkit.config import ViTConfig
from vitkit.data.folder import (
    FolderIndex,
    StreamingFolder,
    _cache_key,
    _decode,
    load_folder_cached,
    probe,
    probe_images,
    readable_only,
    scan_folder,
)
from vitkit.data.preprocess import InputSpec, image_to_uint8, open_image, prepare_image, upright_size
from vitkit.model import ViT
from vitkit.notices import VitkitWarning
from vitkit.opened import OpenedModel

H, W = 32, 48  # the upright picture: wider than high
SPEC = InputSpec((H, W), 3, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
TINY = [*TINY_ARGS, "--run.batch_size", "8"]


def upright_picture() -> Image.Image:
    """Smooth (JPEG keeps it) and asymmetric (every turn of it differs), W wide and H high."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    px = np.stack([x / W * 230, y / H * 230, 40 + 0 * x], axis=-1)
    px[:10, :14] = (250, 250, 250)  # a bright top-left corner
    return Image.fromarray(px.astype(np.uint8), "RGB")


def save_turned(path: Path, fmt: str = "JPEG", mode: str = "RGB", orientation: int = 6) -> Path:
    """Store the picture as a camera does: pixels turned a quarter (H wide, W high) and the EXIF
    orientation that turns them back."""
    raw = upright_picture().transpose(Image.Transpose.ROTATE_90).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    raw.save(path, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def expected_uint8(path: Path) -> torch.Tensor:
    """The upright pixels, decoded independently of vitkit, as (3, H, W) uint8."""
    with Image.open(path) as im:
        ref = ImageOps.exif_transpose(im)
    return image_to_uint8(ref, 3, (H, W))


def assert_upright(t: torch.Tensor, path: Path) -> None:
    """t is the upright picture: exactly as the reference decodes it, and like the picture, not
    like the picture turned round."""
    assert tuple(t.shape) == (3, H, W)
    assert torch.equal(t, expected_uint8(path))
    a = t.float().flatten().numpy()
    up = np.asarray(upright_picture(), np.float32).transpose(2, 0, 1).flatten()
    turned = np.asarray(upright_picture().transpose(Image.Transpose.ROTATE_180), np.float32)
    assert np.corrcoef(a, up)[0, 1] > 0.95 > np.corrcoef(a, turned.transpose(2, 0, 1).flatten())[0, 1]


@pytest.fixture
def photo(tmp_path) -> Path:
    return save_turned(tmp_path / "photos" / "a" / "photo.jpg")


@pytest.fixture
def folder(photo) -> Path:
    root = photo.parent.parent
    (root / "b").mkdir()
    upright_picture().save(root / "b" / "plain.png")
    return root


def tiny_opened() -> OpenedModel:
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=(H, W), patch_size=8, hidden_size=32, num_layers=2, num_heads=2,
                    mlp_size=64, num_classes=3)
    return OpenedModel(randomize_(ViT(cfg).eval(), seed=1), ["x", "y", "z"], SPEC, report=None,
                       source="memory", name="tiny")


# ---- (a) EXIF orientation in every reader ----------------------------------------------------

def test_the_fixture_is_stored_turned(photo):
    with Image.open(photo) as im:
        assert im.size == (H, W)  # raw: H wide, W high
    assert not torch.equal(image_to_uint8(Image.open(photo), 3, (H, W)), expected_uint8(photo))


def test_open_image_turns_upright_and_keeps_the_format(photo):
    with open_image(photo) as im:
        assert im.size == (W, H) and im.format == "JPEG" and im.getexif().get(0x0112) is None
        assert_upright(image_to_uint8(im, 3, None), photo)
    with open(photo, "rb") as f:  # a stream is read and left open for its owner
        assert open_image(f).size == (W, H) and not f.closed
    with Image.open(photo) as im:
        assert upright_size(im) == (W, H) and im.size == (H, W)  # from the header, not decoded


@pytest.mark.parametrize("orientation, size", [(1, (H, W)), (3, (H, W)), (5, (W, H)), (8, (W, H))])
def test_every_orientation_matches_pil(tmp_path, orientation, size):
    path = save_turned(tmp_path / "o.png", "PNG", orientation=orientation)
    with Image.open(path) as im:
        assert upright_size(im) == size
        ref = np.asarray(ImageOps.exif_transpose(im))
    with open_image(path) as im:
        assert im.size == size
        np.testing.assert_array_equal(np.asarray(im), ref)


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGB"), ("TIFF", "RGB"), ("WEBP", "RGB"), ("JPEG", "CMYK"),
                                       ("PNG", "I;16"), ("PNG", "P"), ("PNG", "LA"), ("GIF", "P")])
def test_modes_and_formats(tmp_path, fmt, mode):
    path = save_turned(tmp_path / f"x.{fmt.lower()}", fmt, mode)
    with Image.open(path) as im:
        header = upright_size(im)
        ref = ImageOps.exif_transpose(im)
    with open_image(path) as im:
        assert im.size == ref.size == header  # GIF stores no EXIF: it stays as stored
        assert im.mode == ref.mode
        np.testing.assert_array_equal(np.asarray(im), np.asarray(ref))
        t = image_to_uint8(im, 3, (H, W))
    assert t.shape == (3, H, W)
    if fmt in ("PNG", "TIFF") and mode == "RGB":  # lossless: the picture itself, turned once only
        np.testing.assert_array_equal(np.asarray(open_image(path)), np.asarray(upright_picture()))


def test_decompression_bomb_check_is_kept(photo, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the photo has 1536 pixels, over twice that
    with pytest.raises(Image.DecompressionBombError):
        open_image(photo)
    assert _decode((str(photo), 3, (H, W))) is None  # the folder reader skips it as unreadable


def test_folder_readers(folder, photo, tmp_path):
    index = scan_folder(folder)
    assert index.paths[0] == photo
    assert probe(index) == ((H, W), 3) and probe_images([photo], "x") == ((H, W), 3)
    cached = load_folder_cached(index, 3, (H, W), tmp_path / "cache", workers=0)
    assert_upright(cached.images[0], photo)
    assert torch.equal(cached.images[1], image_to_uint8(upright_picture(), 3, (H, W)))
    assert_upright(StreamingFolder(index, 3, size=(H, W))[0][0], photo)
    assert readable_only(index, workers=0).paths == index.paths


def test_predict_and_features_read_upright(photo):
    from vitkit.features import FeatureModel, FeatureOptions, file_features
    from vitkit.predict import predict_files

    opened = tiny_opened()
    x = prepare_image(ImageOps.exif_transpose(Image.open(photo)), SPEC)
    with torch.no_grad():
        probs = opened.model.predict_proba(x[None])[0]
    top = predict_files(opened, [photo], topk=3, precision="fp32", compile=False, engine="torch")[0]["top"]
    np.testing.assert_allclose([t["probability"] for t in top], probs[[t["index"] for t in top]].numpy(),
                               atol=1e-5)
    fm = FeatureModel(opened, FeatureOptions(precision="fp32"))
    np.testing.assert_allclose(file_features(fm, [photo], cache=False).features, fm(x[None]).numpy(),
                               atol=1e-5)


def test_export_calibration_and_visualize_read_upright(photo):
    from vitkit.export.prepare import calibration_batch
    from vitkit.visualize.run import load_images

    expected = prepare_image(ImageOps.exif_transpose(Image.open(photo)), SPEC)
    torch.testing.assert_close(calibration_batch([photo], SPEC)[0], expected)
    assert_upright(load_images([photo], SPEC).raw[0], photo)


def test_shards_read_upright(folder, photo, tmp_path):
    from vitkit.data.shards import ShardStream, open_shards, probe_shards, write_shards

    out = write_shards(scan_folder(folder), tmp_path / "shards", seed=None)
    shards = open_shards(str(out))
    assert probe_shards(shards) == ((H, W), 3)
    (img, label), (plain, _) = list(ShardStream(shards, 3, (H, W), train=False))
    assert label == 0
    assert_upright(img, photo)
    assert torch.equal(plain, image_to_uint8(upright_picture(), 3, (H, W)))


def test_serve_reports_the_upright_size(photo):
    from vitkit.serve.images import decode_image
    from vitkit.serve.inference import Engine

    img = decode_image(photo.read_bytes(), max_pixels=10_000)
    assert img.size == (W, H) and img.format == "JPEG"
    prepared = Engine(tiny_opened(), precision="fp32", compile=False, engine="torch").prepare(img)
    assert prepared.size == (W, H) and prepared.format == "JPEG"
    torch.testing.assert_close(prepared.tensor, prepare_image(ImageOps.exif_transpose(Image.open(photo)),
                                                              SPEC))


def test_served_json_names_the_upright_size(photo):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from vitkit.serve import ServeOptions, create_app

    app = create_app(tiny_opened(), ServeOptions(max_batch=1, max_wait_ms=1, engine="torch"))
    with TestClient(app) as client:
        r = client.post("/v1/predict", content=photo.read_bytes(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {"width": W, "height": H, "mode": "RGB", "format": "JPEG"}


def test_caches_of_raw_pixels_are_not_read(folder, monkeypatch):
    """Decoded and feature caches are keyed by how images are decoded."""
    import vitkit.data.folder as folder_module
    import vitkit.features as features_module

    index = scan_folder(folder)
    key = _cache_key(index, 3, (H, W))
    monkeypatch.setattr(folder_module, "DECODING", "raw")
    assert _cache_key(index, 3, (H, W)) != key
    fm = features_module.FeatureModel(tiny_opened(), features_module.FeatureOptions(precision="fp32"))
    data_key = fm.key("data")
    monkeypatch.setattr(features_module, "DECODING", "raw")
    assert fm.key("data") != data_key


# ---- (b) links that lead nowhere ------------------------------------------------------------

def small_folder(root: Path, n: int = 8) -> Path:
    """Two classes of n 8x8 images each, told apart by brightness."""
    rng = np.random.default_rng(0)
    for c, level in (("cat", 40), ("dog", 200)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            px = np.clip(level + rng.integers(-20, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / c / f"{i}.png")
    return root


def add_broken_links(root: Path) -> tuple[Path, Path]:
    loop, gone = root / "cat" / "loop.jpg", root / "dog" / "gone.png"
    os.symlink("loop.jpg", loop)  # points to itself
    os.symlink(root / "nowhere.png", gone)  # dangling
    return loop, gone


def warned(rec, capsys) -> str:
    """Everything warned: recorded, or printed by the command line's plain warnings."""
    return " ".join(str(w.message) for w in rec) + capsys.readouterr().err


def test_broken_links_are_skipped_when_scanning_and_listing(tmp_path):
    from vitkit.predict import list_images

    root = small_folder(tmp_path / "imgs", n=3)
    loop, gone = add_broken_links(root)
    with pytest.warns(VitkitWarning, match=r"skipped 2 unreadable image\(s\).*loop\.jpg.*gone\.png"):
        index = scan_folder(root)
    assert len(index.paths) == 6 and loop not in index.paths and gone not in index.paths
    with pytest.warns(VitkitWarning, match=r"skipped 2 unreadable image\(s\).*loop\.jpg.*gone\.png"):
        files = list_images([root])
    assert len(files) == 6 and loop not in files and gone not in files


def test_links_broken_after_scanning_are_unreadable_images(tmp_path):
    """A link that breaks between listing and decoding: the cache key and the decoding skip it."""
    from vitkit.features import _files_fingerprint

    root = small_folder(tmp_path / "imgs", n=3)
    index = scan_folder(root)
    loop, gone = add_broken_links(root)
    index = FolderIndex(root, [*index.paths, loop, gone], [*index.labels, 0, 1], index.classes)
    _cache_key(index, 3, (8, 8))
    _files_fingerprint([loop, gone])
    with pytest.warns(VitkitWarning, match=r"skipped 2 unreadable image\(s\).*loop\.jpg.*gone\.png"):
        data = load_folder_cached(index, 3, (8, 8), tmp_path / "cache", workers=0)
    assert len(data) == 6


def test_train_pretrain_and_embed_skip_broken_links(tmp_path, capsys):
    from helpers import tiny_train_config

    from vitkit.cli import main
    from vitkit.data.pipeline import DataConfig
    from vitkit.pretrain import PretrainConfig, pretrain

    root = small_folder(tmp_path / "imgs")
    add_broken_links(root)
    run, cache = tmp_path / "run", str(tmp_path / "cache")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        main(["train", *TINY, "--data.dataset", "folder", "--data.path", str(root), "--run.epochs", "1",
              "--run.out", str(run), "--data.cache_dir", cache, "--data.val_split", "0.25"])
    text = warned(rec, capsys)
    assert "unreadable image(s)" in text and "loop.jpg" in text and "gone.png" in text
    assert (run / "config.json").is_file()

    cfg = tiny_train_config(tmp_path / "pre", epochs=1)
    cfg.data = DataConfig(dataset="folder", path=str(root), val_split=0.25, workers=0, cache_dir=cache)
    cfg.run.batch_size = 4
    with pytest.warns(VitkitWarning, match=r"unreadable image\(s\).*loop\.jpg.*gone\.png"):
        assert pretrain(cfg, PretrainConfig(objective="mae")).status == "finished"

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        main(["embed", str(run), str(root), "--out", str(tmp_path / "e.npy"), "--cache_dir", cache,
              "--features.precision", "fp32"])
    text = warned(rec, capsys)
    assert "unreadable image(s)" in text and "loop.jpg" in text and "gone.png" in text
    assert np.load(tmp_path / "e.npy").shape[0] == 16


# ---- (c) the warning again from the cache ---------------------------------------------------

def test_unreadable_images_are_named_again_from_the_decoded_cache(tmp_path):
    root = small_folder(tmp_path / "imgs", n=3)
    (root / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8garbage")
    index = scan_folder(root)
    cache = tmp_path / "cache"
    messages = []
    for _ in range(2):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            data = load_folder_cached(index, 3, (8, 8), cache, workers=0)
        assert len(data) == 6
        messages.append([str(w.message) for w in rec if "unreadable" in str(w.message)])
    assert len(list(cache.glob("folder-*.safetensors"))) == 1  # the second pass read the cache
    assert len(messages[0]) == 1 and "corrupt.jpg" in messages[0][0] and messages[1] == messages[0]


def test_training_twice_warns_twice(tmp_path, capsys):
    from vitkit.cli import main

    root = small_folder(tmp_path / "imgs", n=6)
    (root / "dog" / "corrupt.jpg").write_bytes(b"\xff\xd8garbage")
    cache = tmp_path / "cache"
    for i in range(2):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            main(["train", *TINY, "--data.dataset", "folder", "--data.path", str(root), "--run.epochs", "1",
                  "--run.out", str(tmp_path / f"run{i}"), "--data.cache_dir", str(cache),
                  "--data.val_split", "0.25"])
        text = warned(rec, capsys)
        assert "skipped 1 unreadable image(s)" in text and "corrupt.jpg" in text, (i, text)
    assert len(list(cache.glob("folder-*.safetensors"))) == 1


def test_embed_twice_warns_twice(tmp_path):
    from test_probe import _opened, _tiny_digits_model

    from vitkit.features import FeatureModel, FeatureOptions, file_features

    fm = FeatureModel(_opened(_tiny_digits_model(), tmp_path), FeatureOptions(precision="fp32"))
    root = small_folder(tmp_path / "imgs", n=2)
    bad = root / "cat" / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    files = sorted(root.rglob("*.*"))
    results = []
    for _ in range(2):
        with pytest.warns(VitkitWarning, match="corrupt.jpg: cannot read image") as rec:
            results.append(file_features(fm, files, tmp_path / "cache"))
        assert sum("corrupt.jpg" in str(w.message) for w in rec) == 1
    assert not results[0].from_cache and results[1].from_cache and len(results[1].names) == 4

