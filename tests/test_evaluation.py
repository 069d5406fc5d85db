import numpy as np
import pytest
import torch

from vitkit.data.arrays import ImageArrays
from vitkit.data.preprocess import InputSpec
from vitkit.evaluation import evaluate_model, inference_precision
from vitkit.model import ViT, ViTConfig


def test_precision_choice():
    assert inference_precision("fp32", "cpu") == "fp32"
    assert inference_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        inference_precision("fp16", "cpu")


def test_evaluate_counts_match_a_direct_computation():
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_layers=1,
                          num_heads=2, mlp_size=32, num_classes=3))
    torch.nn.init.normal_(model.head.weight)
    images = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 3, (50,))
    spec = InputSpec((8, 8), 1, [0.5], [0.5])
    res = evaluate_model(model, ImageArrays(images, labels, ["a", "b", "c"]), spec, ["a", "b", "c"],
                         batch_size=16)
    with torch.no_grad():
        pred = model.eval()((images.float() / 255 - 0.5) / 0.5).argmax(1)
    assert res.top1 == pytest.approx((pred == labels).float().mean().item())
    assert res.top5 == 1.0 and res.count == 50
    assert np.array_equal(res.confusion.sum(1), np.bincount(labels.numpy(), minlength=3))
