"""Training precision: what "auto" and an explicit bf16 become on the machine at hand."""

import pytest
import torch

from vitkit import precision
from vitkit.notices import VitkitWarning


def test_bf16_on_a_cpu_without_native_bf16_trains_in_fp32(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    with pytest.warns(VitkitWarning, match="no native bf16.*training in fp32"):
        assert precision.training_precision("bf16", torch.device("cpu")) == "fp32"
    assert precision.training_precision("auto", torch.device("cpu")) == "fp32"


def test_bf16_on_a_cpu_with_native_bf16_is_kept(monkeypatch, recwarn):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision.training_precision("bf16", torch.device("cpu")) == "bf16"
    assert precision.training_precision("fp32", torch.device("cpu")) == "fp32"
    assert not [w for w in recwarn if issubclass(w.category, VitkitWarning)]
