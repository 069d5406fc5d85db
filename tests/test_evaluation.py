import numpy as np
import pytest
import torch
from conftest import randomize_

from vitkit.data.arrays import ImageArrays
from vitkit.data.preprocess import InputSpec
from vitkit.evaluation import evaluate_model
from vitkit.inference import for_inference
from vitkit.model import ViT, ViTConfig
from vitkit.precision import inference_precision

pytestmark = pytest.mark.precision  # make test runs these again as on the other kind of CPU


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


def test_bf16_inference_weights_give_the_autocast_logits():
    """Storing the matrices in bf16 once is what autocast does on every forward: same logits."""
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_size=64,
                    num_classes=5, stem="conv", stem_channels=16)
    model = randomize_(ViT(cfg)).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(x).float()
        fast = for_inference(model, "bf16")
        assert fast.patch_embed.proj.weight.dtype == torch.bfloat16
        assert fast.norm.weight.dtype == torch.float32 and fast.pos_embed.dtype == torch.float32
        out = fast(x).float()
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    assert for_inference(ViT(cfg), "fp32").patch_embed.proj.weight.dtype == torch.float32
