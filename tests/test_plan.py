"""The input plan, made once: size, patch, stem, resize, cache and augmentation defaults by data
kind, one patch check, one size normalizer, and no decision left to the data loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.config import ViTConfig, patch_problem
from vitkit.data.augment import AugmentConfig, BatchAugment
from vitkit.data.inputs import Survey, cache_bytes, should_cache
from vitkit.data.pipeline import DataConfig
from vitkit.plan import (
    CROP_MARGIN,
    PHOTO_SIZE,
    cache_size,
    load_data,
    model_geometry,
    plan_input,
    resolve_augment,
)
from vitkit.sizes import hw
from vitkit.training.config import ModelSpec


def _survey(own, channels=3, natural=True, dataset="folder", count=100) -> Survey:
    """What a survey of data of this kind would say (no files behind it)."""
    return Survey(dataset, own, channels, natural, ["a", "b"], count, 0, False, None)


def decide(own, own_channels, natural=True, augment=None, model=None, **data):
    """The plan for data of this size and channels, with the given DataConfig fields and model."""
    dataset = "folder" if natural else "digits"
    return plan_input(DataConfig(dataset=dataset, **data), augment, model,
                      _survey(own, own_channels, natural, dataset))


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
    assert geo.image_size == size and geo.channels == channels and not geo.photos and geo.resize == "squash"
    assert (geo.model.patch_size, geo.model.stem, geo.model.stem_stride) == (patch, "conv", 1)
    aug, reason = resolve_augment(AugmentConfig(), geo.photos, size)
    assert (aug.crop, aug.flip, aug.pad) == ("pad", False, None)  # shifts, never mirrors (digits)
    shift = {8: 1, 28: 3, 32: 4, 30: 3}[size[0]]  # an eighth of the side, at least 1
    assert reason == f"random shifts by up to {shift} px (pad and crop; set --augment.crop none to turn off)"
    assert resolve_augment(AugmentConfig(crop="none"), geo.photos, size) == (
        AugmentConfig(crop="none", flip=False), None)
    given = resolve_augment(AugmentConfig(), geo.photos, size, from_scratch=False)  # fine-tuning
    assert given == (AugmentConfig(crop="none", flip=False), None)


@pytest.mark.parametrize("own", [(512, 384), (100, 75), (4000, 3000)])
def test_photos_train_small_on_the_patch_embedding_with_photo_augmentation(own):
    geo = decide(own, 3)
    assert geo.photos and geo.image_size == (PHOTO_SIZE, PHOTO_SIZE) == (64, 64) and geo.resize == "crop"
    m = geo.model
    assert (m.stem, m.patch_size, m.stem_stride) == ("patch", 8, 1)  # no conv at full resolution
    assert patch_problem(geo.image_size, m.patch_size) is None
    aug, reason = resolve_augment(AugmentConfig(), True)
    assert (aug.crop, aug.flip) == ("resized", True)
    assert reason == "crop resized + flip (natural images; set --augment.crop none to turn off)"


def test_given_values_win():
    geo = decide((512, 384), 3, image_size=224, channels=1, model=ModelSpec(stem="patch"))
    assert geo.image_size == (224, 224) and geo.channels == 1
    assert (geo.model.stem, geo.model.patch_size) == ("patch", 16)
    assert model_geometry(224, {"variant": "Ti/16"}).patch_size == 16
    assert model_geometry(96, {"stem_stride": 2, "stem": "conv"}).stem_stride == 2
    aug, reason = resolve_augment(AugmentConfig(crop="none"), True)
    assert (aug.crop, aug.flip) == ("none", True) and "flip" in reason and "crop" not in reason
    aug, reason = resolve_augment(AugmentConfig(crop="pad", flip=False), True)
    assert (aug.crop, aug.flip, reason) == ("pad", False, None)


def test_build_config_takes_the_plans_geometry():
    small = ModelSpec().build_config((32, 32), 3, 10, model_geometry(32))
    assert (small.stem, small.stem_stride) == ("conv", 1)
    photos = model_geometry(PHOTO_SIZE, photos=True)
    photo = ModelSpec().build_config((PHOTO_SIZE, PHOTO_SIZE), 3, 3, photos)
    assert (photo.stem, photo.patch_size) == (photos.stem, photos.patch_size) == ("patch", 8)
    big = ModelSpec().build_config((224, 224), 3, 3, model_geometry(224))  # conv stem above 64 px: strided
    assert (big.stem, big.patch_size, big.stem_stride) == ("conv", 16, model_geometry(224).stem_stride)
    assert big.stem_stride > 1
    spec = ModelSpec(variant="Ti/16")
    named = spec.build_config((64, 96), 3, 2, model_geometry((64, 96), vars(spec), photos=True))
    assert (named.hidden_size, named.patch_size, named.stem, named.image_size) == (192, 16, "patch", (64, 96))


def test_one_size_normalizer_and_one_patch_check():
    """Sizes are pairs in the model config; the patch check is the config's, and every other
    place that refuses a size (the model's forward, exported graphs, figures) calls it."""
    from pathlib import Path

    import vitkit

    assert hw(5) == (5, 5) and hw([6, 7]) == (6, 7) and hw((8, 9)) == (8, 9)
    assert ViTConfig(image_size=32, patch_size=8).image_size == (32, 32)
    assert ViTConfig(image_size=[32, 48], patch_size=8).to_dict()["image_size"] == [32, 48]
    assert patch_problem((30, 20), 10) is None
    with pytest.raises(ValueError, match="image size 30x20 is not a multiple of patch size 4"):
        ViTConfig(image_size=(30, 20), patch_size=4)
    src = Path(vitkit.__file__).parent
    saying = [p.relative_to(src).as_posix() for p in src.rglob("*.py")
              if "not a multiple of patch" in p.read_text()]
    assert saying == ["config.py"]
    assert not [p for p in src.rglob("*.py") if "def hw(" in p.read_text() and p.name != "sizes.py"]
    assert not (src / "data" / "geometry.py").exists()


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


def test_a_small_folder_keeps_its_size_and_is_shifted_not_mirrored(tmp_path):
    root = _folder(tmp_path / "small", [(32, 32)])
    data = load_data(DataConfig(dataset="folder", path=str(root), val_split=0.25,
                                cache_dir=str(tmp_path / "cache")), AugmentConfig())
    assert data.in_memory and tuple(data.train.images.shape[-2:]) == (32, 32)
    assert (data.augment.crop, data.augment.flip) == ("pad", False)
    assert "image size 32x32 taken from the data" in data.notes
    assert "random shifts by up to 4 px (pad and crop; set --augment.crop none to turn off)" in data.notes
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


@pytest.fixture
def counted(monkeypatch):
    """How often the input is planned and the data surveyed, wherever the functions are imported."""
    import sys

    import vitkit.finetune  # noqa: F401  (every module that plans, imported before counting)
    import vitkit.finetune.linear  # noqa: F401
    import vitkit.plan as plan
    import vitkit.pretrain  # noqa: F401
    from vitkit.data import pipeline

    calls = {"plan": 0, "survey": 0}
    real_plan, real_survey = plan.plan_input, pipeline.survey_data

    def counting_plan(*a, **k):
        calls["plan"] += 1
        return real_plan(*a, **k)

    def counting_survey(*a, **k):
        calls["survey"] += 1
        return real_survey(*a, **k)

    for name, module in list(sys.modules.items()):
        if name.startswith("vitkit"):
            if getattr(module, "plan_input", None) is real_plan:
                monkeypatch.setattr(module, "plan_input", counting_plan)
            if getattr(module, "survey_data", None) is real_survey:
                monkeypatch.setattr(module, "survey_data", counting_survey)
    return calls


def test_the_plan_is_made_once_by_train_pretrain_and_finetune(tmp_path, counted):
    """One plan and one survey per run: training, pre-training and each fine-tuning mode (which
    plans before it builds the model and hands the plan on, so the data are read once)."""
    from helpers import tiny_train_config

    from vitkit.finetune import finetune
    from vitkit.pretrain import pretrain
    from vitkit.training import RunConfig, fit

    fit(tiny_train_config(tmp_path / "train", epochs=1))
    assert counted == {"plan": 1, "survey": 1}
    counted.update(plan=0, survey=0)
    pretrain(tiny_train_config(tmp_path / "pretrain", epochs=1))
    assert counted == {"plan": 1, "survey": 1}
    for mode in ("full", "linear", "lora"):
        counted.update(plan=0, survey=0)
        run = RunConfig(epochs=1, batch_size=64, out=str(tmp_path / mode), progress=False, precision="fp32")
        result = finetune(tmp_path / "train", DataConfig(dataset="digits"), run=run, mode=mode)
        assert result.status == "finished"
        assert counted == {"plan": 1, "survey": 1}, mode


def test_a_resumed_finetune_plans_the_same_input(tmp_path):
    """A fine-tuning run stores the source's size, channels, normalization, patch and stem, so
    planning again from the stored config gives the plan the run was made with."""
    from helpers import tiny_train_config

    from vitkit.finetune import finetune
    from vitkit.training import RunConfig, TrainConfig, fit

    fit(tiny_train_config(tmp_path / "src", epochs=1, data={"image_size": [8, 8]}))
    run = RunConfig(epochs=1, batch_size=64, out=str(tmp_path / "ft"), progress=False, precision="fp32")
    finetune(tmp_path / "src", DataConfig(dataset="digits"), image_size=(8, 12), run=run)
    import json

    stored = TrainConfig.from_dict(json.loads((tmp_path / "ft" / "config.json").read_text())["train"])
    again = plan_input(stored.data, stored.augment, stored.model)
    meta = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert again.image_size == (8, 12) == tuple(meta["data"]["image_size"])
    assert again.patch == 2 and again.model.stem == "patch"
    assert again.mean == meta["data"]["mean"]
