"""Input geometry decided once: size, patch, stem, cache and augmentation defaults by data kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data.augment import AugmentConfig, BatchAugment
from vitkit.data.geometry import (
    CROP_MARGIN,
    PHOTO_SIZE,
    cache_bytes,
    cache_size,
    check_patch,
    decide,
    hw,
    model_geometry,
    patch_problem,
    resolve_augment,
    should_cache,
)
from vitkit.data.pipeline import DataConfig, load_data
from vitkit.training.config import ModelSpec


def _folder(root, sizes, per_class=4, classes=("a", "b")):
    """root/<class>/<i>.png with smooth random colours (so JPEG-free and fast)."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize("own, channels, natural, size, patch", [
    ((8, 8), 1, False, (8, 8), 2),  # digits
    ((28, 28), 1, False, (28, 28), 4),  # MNIST
    ((32, 32), 3, True, (32, 32), 4),  # CIFAR
    ((31, 31), 3, True, (30, 30), 3),  # a prime side moves to the nearest reasonable grid
])
def test_small_images_keep_their_size_and_full_resolution_stem(own, channels, natural, size, patch):
    geo = decide(own, channels, natural)
    assert geo.image_size == size and geo.channels == channels and not geo.photos
    assert (geo.model.patch_size, geo.model.stem, geo.model.stem_stride) == (patch, "conv", 1)
    aug, reason = resolve_augment(AugmentConfig(), geo.photos)
    assert (aug.crop, aug.flip, reason) == ("none", False, None)


@pytest.mark.parametrize("own", [(512, 384), (100, 75), (4000, 3000)])
def test_photos_train_small_on_the_patch_embedding_with_photo_augmentation(own):
    geo = decide(own, 3)
    assert geo.photos and geo.image_size == (PHOTO_SIZE, PHOTO_SIZE) == (64, 64)
    m = geo.model
    assert (m.stem, m.patch_size, m.stem_stride) == ("patch", 8, 1)  # no conv at full resolution
    assert patch_problem(geo.image_size, m.patch_size) is None
    aug, reason = resolve_augment(AugmentConfig(), True)
    assert (aug.crop, aug.flip) == ("resized", True)
    assert reason == "crop resized + flip (natural images; set --augment.crop none to turn off)"


def test_given_values_win():
    geo = decide((512, 384), 3, image_size=224, want_channels=1, model={"stem": "patch"})
    assert geo.image_size == (224, 224) and geo.channels == 1
    assert (geo.model.stem, geo.model.patch_size) == ("patch", 16)
    assert model_geometry(224, {"variant": "Ti/16"}).patch_size == 16
    assert model_geometry(96, {"stem_stride": 2, "stem": "conv"}).stem_stride == 2
    aug, reason = resolve_augment(AugmentConfig(crop="none"), True)
    assert (aug.crop, aug.flip) == ("none", True) and "flip" in reason and "crop" not in reason
    aug, reason = resolve_augment(AugmentConfig(crop="pad", flip=False), True)
    assert (aug.crop, aug.flip, reason) == ("pad", False, None)


def test_build_config_takes_the_geometry():
    small = ModelSpec().build_config((32, 32), 3, 10)
    assert (small.stem, small.stem_stride) == ("conv", 1)
    photos = model_geometry(PHOTO_SIZE, photos=True)
    photo = ModelSpec().build_config((PHOTO_SIZE, PHOTO_SIZE), 3, 3, photos)
    assert (photo.stem, photo.patch_size) == (photos.stem, photos.patch_size) == ("patch", 8)
    big = ModelSpec().build_config((224, 224), 3, 3)  # a conv stem above 64 px is strided
    assert (big.stem, big.patch_size, big.stem_stride) == ("conv", 16, model_geometry(224).stem_stride)
    assert big.stem_stride > 1


def test_one_size_normalizer_and_one_patch_check():
    assert hw(5) == (5, 5) and hw([6, 7]) == (6, 7) and hw((8, 9)) == (8, 9)
    check_patch((30, 20), 10)
    with pytest.raises(ValueError, match="image size 30x20 is not a multiple of patch size 4"):
        check_patch((30, 20), 4)


def test_cache_is_decided_by_bytes_not_by_side():
    assert cache_bytes(450, 3, (128, 128)) == 450 * 3 * 128 * 128  # 22 MB: cached
    assert should_cache("auto", cache_bytes(450, 3, (128, 128)))
    assert not should_cache("auto", cache_bytes(10_000_000, 3, (96, 96)))  # 276 GB: streamed
    assert should_cache("always", 10**15) and not should_cache("never", 1)


def test_resized_crops_come_from_a_larger_cached_copy():
    big = round(PHOTO_SIZE * CROP_MARGIN)
    assert cache_size((PHOTO_SIZE, PHOTO_SIZE), (512, 384), "resized") == (big, big)
    assert cache_size((PHOTO_SIZE, PHOTO_SIZE), (512, 384), "none") == (PHOTO_SIZE, PHOTO_SIZE)
    assert cache_size((32, 32), (32, 32), "resized") == (32, 32)  # never beyond the images' own
    aug = BatchAugment(AugmentConfig(crop="resized", flip=True), 2, [0.5] * 3, [0.5] * 3, size=(8, 8))
    x, _ = aug(torch.randint(0, 256, (4, 3, 10, 10), dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    assert x.shape == (4, 3, 8, 8)


def test_a_folder_of_a_few_large_images_is_cached_with_the_defaults_line(tmp_path):
    root = _folder(tmp_path / "photos", [(300, 200), (300, 200), (250, 250)])
    cfg = DataConfig(dataset="folder", path=str(root), val_split=0.25, cache_dir=str(tmp_path / "cache"))
    data = load_data(cfg, AugmentConfig(), ModelSpec())
    big = round(PHOTO_SIZE * CROP_MARGIN)
    assert data.in_memory and data.spec.image_size == (PHOTO_SIZE, PHOTO_SIZE)
    assert tuple(data.train.images.shape[-2:]) == (big, big)
    assert tuple(data.val.images.shape[-2:]) == (PHOTO_SIZE, PHOTO_SIZE)
    assert len(data.train) + len(data.val) == 8 and len(data.val) == 2
    assert (data.augment.crop, data.augment.flip) == ("resized", True)
    line = (f"photos 300x200 -> {PHOTO_SIZE}x{PHOTO_SIZE} (crop), patch 8, stem patch, crop resized + flip "
            "(natural images; set --augment.crop none to turn off)")
    assert line in data.notes
    assert list((tmp_path / "cache").glob("folder-*.safetensors"))  # decoded once, on disk


def test_a_folder_over_the_budget_streams(tmp_path):
    root = _folder(tmp_path / "photos", [(120, 120)])
    cfg = DataConfig(dataset="folder", path=str(root), val_split=0.25, cache_gb=1e-6,
                     cache_dir=str(tmp_path / "cache"))
    data = load_data(cfg, AugmentConfig())
    assert not data.in_memory and data.cropped
    assert data.batch_augment(AugmentConfig()).crop == "none" and data.batch_augment(AugmentConfig()).flip
    assert any("streamed" in n and "cache_gb" in n for n in data.notes)


def test_small_folder_keeps_todays_behaviour(tmp_path):
    root = _folder(tmp_path / "small", [(32, 32)])
    data = load_data(DataConfig(dataset="folder", path=str(root), val_split=0.25,
                                cache_dir=str(tmp_path / "cache")), AugmentConfig())
    assert data.in_memory and tuple(data.train.images.shape[-2:]) == (32, 32)
    assert (data.augment.crop, data.augment.flip) == ("none", False)
    assert "image size 32x32 taken from the data" in data.notes
    assert not any(n.startswith("photos") for n in data.notes)


def test_training_on_photos_prints_the_defaults_and_builds_the_photo_model(tmp_path, capsys):
    from vitkit.training import RunConfig, TrainConfig, fit

    root = _folder(tmp_path / "photos", [(160, 120)], per_class=6)
    cfg = TrainConfig(data=DataConfig(dataset="folder", path=str(root), val_split=0.25,
                                      cache_dir=str(tmp_path / "cache")),
                      run=RunConfig(epochs=1, batch_size=4, out=str(tmp_path / "run"), progress=False))
    result = fit(cfg)
    out = capsys.readouterr().out
    assert f"photos 160x120 -> {PHOTO_SIZE}x{PHOTO_SIZE} (crop), patch 8, stem patch" in out
    assert "stem patch" in out.split("model: ")[1].splitlines()[0]  # the model built is the one announced
    assert result.status == "finished" and result.val_acc is not None
