"""Training precision: what "auto" and an explicit bf16 become on the machine at hand."""

import numpy as np
import pytest
import torch

from vitkit import precision
from vitkit.notices import VitkitWarning

pytestmark = pytest.mark.precision  # make test runs these again as on the other kind of CPU


def test_bf16_on_a_cpu_without_native_bf16_trains_in_fp32(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    with pytest.warns(VitkitWarning, match="no native bf16.*training in fp32"):
        assert precision.training_precision("bf16", torch.device("cpu")) == "fp32"
    for width in (None, 64, precision.BF16_TRAINING_MIN_WIDTH, 1024):
        assert precision.training_precision("auto", torch.device("cpu"), width) == "fp32"


def test_auto_on_a_cpu_with_native_bf16_depends_on_the_width(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    wide = precision.BF16_TRAINING_MIN_WIDTH
    cpu = torch.device("cpu")
    assert [precision.training_precision("auto", cpu, w) for w in (None, 64, 384, wide - 1)] == ["fp32"] * 4
    assert [precision.training_precision("auto", cpu, w) for w in (wide, 2 * wide)] == ["bf16"] * 2


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_follows_bf16_support_whatever_the_width(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    want = "bf16" if supported else "fp32"
    for width in (None, 64, 1024):
        assert precision.training_precision("auto", torch.device("cuda"), width) == want


def test_trainer_width_is_the_model_s_hidden_size():
    from helpers import tiny_train_config

    from vitkit.config import variant
    from vitkit.training.config import SMALL_MODEL, model_width

    cfg = tiny_train_config("unused")
    assert model_width(cfg, None) == 32
    cfg.model.hidden_size = None
    assert model_width(cfg, None) == SMALL_MODEL["hidden_size"]
    cfg.model.variant = "B/16"
    assert model_width(cfg, None) == variant("B/16").hidden_size == 768


def test_bf16_on_a_cpu_with_native_bf16_is_kept(monkeypatch, recwarn):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision.training_precision("bf16", torch.device("cpu")) == "bf16"
    assert precision.training_precision("fp32", torch.device("cpu")) == "fp32"
    assert not [w for w in recwarn if issubclass(w.category, VitkitWarning)]


@pytest.mark.parametrize("value, native", [("0", False), ("1", True)])
def test_environment_switch_overrides_the_cpu(monkeypatch, value, native):
    monkeypatch.setenv(precision.NATIVE_BF16_ENV, value)
    assert precision.native_bf16("cpu") is native
    assert precision.inference_precision("auto", "cpu") == ("bf16" if native else "fp32")


def test_environment_switch_rejects_other_values(monkeypatch):
    monkeypatch.setenv(precision.NATIVE_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="VITKIT_NATIVE_BF16"):
        precision.native_bf16("cpu")


def test_model_stored_in_bf16_takes_fp32_inputs():
    from vitkit.model import ViT, ViTConfig
    from vitkit.visualize.analysis import capture_attention

    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64,
                          num_classes=3))
    x = torch.randn(2, 3, 16, 16)
    reference = capture_attention(model, x)
    precision.for_inference(model, "bf16")
    maps = capture_attention(model, x)  # fp32 input on bf16-stored weights
    assert [m.shape for m in maps] == [m.shape for m in reference]
    for got, want in zip(maps, reference, strict=True):
        np.testing.assert_allclose(got, want, atol=3e-2)
