"""The CUDA paths: the same answers as timm and as vitkit's CPU path, bf16 close to fp32, and a
training run that learns. Skipped where no GPU is present."""

import pytest
import torch
from conftest import randomize_
from helpers import tiny_train_config

from vitkit.config import ViTConfig, variant
from vitkit.formats.timm import timm_kwargs, to_timm
from vitkit.model import ViT
from vitkit.precision import autocast

timm_vit = pytest.importorskip("timm.models.vision_transformer")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")
SMALL = ViTConfig(image_size=48, patch_size=8, hidden_size=64, num_layers=3, num_heads=4, mlp_size=128,
                  num_classes=7)


@pytest.fixture(autouse=True)
def _exact_fp32():
    """Full fp32 matrix products, so that fp32 comparisons are tight."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("cfg", [variant("B/16"), SMALL, SMALL.replace(stem="conv", stem_channels=32)],
                         ids=["B16", "small", "hybrid"])
@torch.no_grad()
def test_cuda_matches_cpu(cfg):
    ours = randomize_(ViT(cfg)).eval()
    x = torch.randn(4, 3, *cfg.image_hw, generator=torch.Generator().manual_seed(1))
    cpu = ours(x)
    gpu = ours.to(CUDA)(x.to(CUDA)).cpu()
    assert cpu.abs().max() > 0.1
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_cuda_matches_timm_and_bf16_is_close():
    ours = randomize_(ViT(variant("B/16"))).eval().to(CUDA)
    theirs = timm_vit.VisionTransformer(**timm_kwargs(variant("B/16"))).eval().to(CUDA)
    theirs.load_state_dict(to_timm(ours.state_dict()))
    x = torch.randn(8, 3, 224, 224, device=CUDA, generator=torch.Generator(CUDA).manual_seed(2))
    a, b = ours(x), theirs(x)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with autocast(CUDA, "bf16"):
        half = ours(x).float()
    assert (half - a).abs().max() < 0.1 * a.abs().max()  # bf16 keeps ~3 significant digits


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_class_token_shortcut_on_cuda_gives_full_gradients(precision):
    """The last block computes the class token alone; logits and gradients equal the full
    computation (in bf16 too: the fused attention kernels take one query row there)."""
    torch.manual_seed(0)
    model = randomize_(ViT(SMALL)).to(CUDA)
    x = torch.randn(3, 3, 48, 48, device=CUDA)
    outs, grads = [], []
    for full in (True, False):
        model.zero_grad()
        with autocast(CUDA, precision):
            out = model.forward_head(model.forward_features(x)) if full else model(x)
        out.float().square().sum().backward()
        outs.append(out.float().detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    tol = 1e-4 if precision == "fp32" else 3e-2
    torch.testing.assert_close(outs[1], outs[0], atol=tol, rtol=tol)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=tol, rtol=tol, msg=n)


def test_digits_training_on_cuda_follows_the_cpu_run(tmp_path):
    """Same seed, same data: the CUDA run's losses track the CPU run's (fp32 closely, bf16
    within rounding), so nothing device-specific changes what is learned."""
    from vitkit.training import fit

    runs = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16")):
        r = fit(tiny_train_config(tmp_path / f"{device}-{precision}", epochs=3,
                                  run={"device": device, "precision": precision}))
        assert r.status == "finished"
        runs[device, precision] = [m["train_loss"] for m in r.metrics]
    cpu = runs["cpu", "fp32"]
    assert cpu[-1] < cpu[0] - 0.2  # it learns
    assert max(abs(a - b) for a, b in zip(runs["cuda", "fp32"], cpu, strict=True)) < 2e-3
    assert max(abs(a - b) for a, b in zip(runs["cuda", "bf16"], cpu, strict=True)) < 3e-2
