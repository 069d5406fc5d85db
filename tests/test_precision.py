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
    for macs in (None, 1e6, 1e9, 1e11):
        assert precision.training_precision("auto", torch.device("cpu"), macs) == "fp32"


@pytest.mark.parametrize("amx", [True, False])
def test_auto_on_a_cpu_with_native_bf16_depends_on_the_work_and_the_bf16_units(monkeypatch, amx):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: amx)
    least = precision.BF16_TRAINING_MIN_MACS["amx" if amx else "avx512"]
    cpu = torch.device("cpu")
    assert [precision.training_precision("auto", cpu, m) for m in (None, 0.5 * least)] == ["fp32"] * 2
    assert [precision.training_precision("auto", cpu, m) for m in (least, 10 * least)] == ["bf16"] * 2
    # measured: the digits recipe (3.1 MMACs) trains in fp32 everywhere, the default model of a
    # 28x28 folder (16.9 MMACs) in bf16 with AMX, S/16 in fp32 and B/16 in bf16 without
    from vitkit.config import variant
    from vitkit.info import forward_macs
    from vitkit.plan import model_geometry
    from vitkit.training.config import ModelSpec

    digits, folder = (forward_macs(ModelSpec().build_config(s, 1, 10, model_geometry(s)))
                      for s in ((8, 8), (28, 28)))
    s16, b16 = (forward_macs(variant(v)) for v in ("S/16", "B/16"))
    got = [precision.training_precision("auto", cpu, m) for m in (digits, folder, s16, b16)]
    assert got == (["fp32", "bf16", "bf16", "bf16"] if amx else ["fp32", "fp32", "fp32", "bf16"])


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_follows_bf16_support_whatever_the_width(monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    want = "bf16" if supported else "fp32"
    for width in (None, 64, 1024):
        assert precision.training_precision("auto", torch.device("cuda"), width) == want


def test_the_trainer_resolves_auto_from_the_model_it_builds(tmp_path, monkeypatch):
    from helpers import tiny_train_config

    from vitkit.info import forward_macs
    from vitkit.training.trainer import Trainer

    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    cfg = tiny_train_config(tmp_path / "r")
    cfg.run.precision = "auto"
    trainer = Trainer(cfg)
    macs = forward_macs(trainer.model.config)
    for least, want in ((macs, "bf16"), (2 * macs, "fp32")):
        monkeypatch.setattr(precision, "BF16_TRAINING_MIN_MACS", {"amx": least, "avx512": least})
        assert Trainer(cfg).precision == want


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
    from vitkit.inference import for_inference
    from vitkit.model import ViT, ViTConfig
    from vitkit.visualize.analysis import capture_attention

    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64,
                          num_classes=3))
    x = torch.randn(2, 3, 16, 16)
    reference = capture_attention(model, x)
    for_inference(model, "bf16")
    maps = capture_attention(model, x)  # fp32 input on bf16-stored weights
    assert [m.shape for m in maps] == [m.shape for m in reference]
    for got, want in zip(maps, reference, strict=True):
        np.testing.assert_allclose(got, want, atol=3e-2)
