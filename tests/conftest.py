import pytest
import torch

from vitkit.model import ViT


@pytest.fixture(autouse=True)
def _openvino_only_where_marked(request, monkeypatch):
    """Engine "auto" may compile OpenVINO models in fp32 or bf16 depending on the precision;
    one process should compile only one of them (vitkit.formats.openvino.may_compile), so in
    the test process OpenVINO is left out of "auto" except in tests marked openvino."""
    if "openvino" not in request.keywords:
        monkeypatch.setattr("vitkit.export.route.openvino_available", lambda: False)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values: the default init zeroes the head and the biases,
    which would make a comparison of logits trivially pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                std = 0.5 / max(p.shape[-1], 1) ** 0.5 if p.ndim > 1 else 0.02
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def tiny_model():
    from vitkit.config import ViTConfig

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=3,
                    mlp_size=96, num_classes=5)
    return randomize_(ViT(cfg).eval())
