"""Any input size the patch divides: the forward equals timm's dynamic_img_size, and the
resampled position embeddings are cached for inference without touching training."""

import pytest
import torch
from conftest import randomize_

import vitkit
from vitkit import ViT, ViTConfig

SIZES = [(224, 320), (160, 288), (336, 208)]


def test_any_size_matches_timm_dynamic_img_size(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    # S/16 as timm registers it, 3 blocks deep to keep the test fast: the sizes differ only before the blocks
    theirs = randomize_(timm.create_model("vit_small_patch16_224", pretrained=False, dynamic_img_size=True,
                                          depth=3))
    theirs.eval()
    torch.save(theirs.state_dict(), tmp_path / "vit_s16.pth")
    ours = vitkit.load(tmp_path / "vit_s16.pth", num_heads=6).float().eval()
    assert ours.config.grid_size == (14, 14)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for hw in SIZES:
            x = torch.randn(1, 3, *hw, generator=g)
            ref = theirs(x)
            assert (ours(x) - ref).abs().max().item() < 1e-5 * max(1.0, ref.abs().max().item()), hw


def _tiny(pos_embed: str = "learn") -> ViT:
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, mlp_size=64,
                    num_classes=3, pos_embed=pos_embed)
    return randomize_(ViT(cfg)).eval()


def test_position_embeddings_are_cached_per_grid_for_inference():
    model = _tiny()
    with torch.no_grad():
        a = model.pos_embed_for((4, 6))
        assert model.pos_embed_for((4, 6)) is a  # resampled once
        assert model.pos_embed_for((6, 4)) is not a and len(model._pos_cache) == 2
        assert model.pos_embed_for((4, 4)) is model.pos_embed  # the trained grid: the parameter itself
        model.pos_embed.mul_(2)  # changed weights: the cached tables are stale
        b = model.pos_embed_for((4, 6))
    assert b is not a and torch.allclose(b, 2 * a) and len(model._pos_cache) == 1
    model.load_state_dict({k: v * 0.5 if k == "pos_embed" else v for k, v in model.state_dict().items()})
    with torch.no_grad():
        assert torch.allclose(model.pos_embed_for((4, 6)), a)


def test_training_at_another_size_is_not_cached_and_reaches_the_position_embeddings():
    model = _tiny().train()
    x = torch.randn(2, 3, 32, 48)
    model(x).sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0
    assert not model._pos_cache


def test_sincos_model_runs_at_another_size_with_the_cache():
    model = _tiny("sincos2d")
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        first = model(x)
        assert torch.equal(model(x), first) and len(model._pos_cache) == 1


def test_evaluation_after_fused_optimizer_steps_reads_fresh_position_embeddings():
    # a fused optimizer step does not bump the weights' version: train()/eval() forgets the tables
    model = _tiny()
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        model(x)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model.train()
    model(torch.randn(2, 3, 24, 40)).sum().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        cached = model(x)
        model._pos_cache.clear()
        assert torch.equal(model(x), cached)
