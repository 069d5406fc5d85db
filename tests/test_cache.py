"""vitkit.cache: where caches live, and the weights fingerprint that keys them."""

import torch

from vitkit.cache import CACHE_ENV, default_cache_dir, model_fingerprint
from vitkit.config import ViTConfig
from vitkit.data.preprocess import InputSpec
from vitkit.model import ViT


def test_fingerprint_covers_buffers_of_a_conv_stem():
    """BatchNorm's running statistics (and its 0-dim step counter) are part of the weights."""
    model = ViT(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=1, num_heads=2, mlp_size=64,
                          stem="conv", stem_channels=16, stem_stride=2, num_classes=3))
    spec = InputSpec((16, 16), 3).to_dict()
    before = model_fingerprint(model, spec)
    assert model_fingerprint(model, spec) == before
    assert model_fingerprint(model, {"other": 1}) != before  # what else keys it counts too
    with torch.no_grad():
        next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean += 0.5
    assert model_fingerprint(model, spec) != before


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "vitkit"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "own"))
    assert default_cache_dir() == tmp_path / "own"
