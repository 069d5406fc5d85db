"""ViT.forward_intermediates: the blocks' own outputs, and timm's forward_intermediates (same weights)."""

import pytest
import torch
from conftest import randomize_

from vitkit.config import ViTConfig
from vitkit.model import ViT

CFG = ViTConfig(image_size=(48, 32), patch_size=8, hidden_size=64, num_layers=4, num_heads=4,
                mlp_size=128, num_classes=7)


def _images(cfg, n=2, seed=1):
    h, w = cfg.image_hw
    return torch.randn(n, cfg.num_channels, h, w, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_tokens_are_the_block_outputs():
    model = randomize_(ViT(CFG)).eval()
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o[0])) for b in model.blocks]
    x = _images(CFG)
    model.forward_features(x)
    for h in hooks:
        h.remove()
    out = model.forward_intermediates(x)
    assert out.layers == [0, 1, 2, 3]
    for i, ref in enumerate(seen):
        torch.testing.assert_close(out.tokens(i), ref, atol=0, rtol=0)
        assert out.prefix[i].shape == (2, 1, 64) and out.patches[i].shape == (2, 24, 64)
    normed = model.forward_intermediates(x, layers=[-1], norm=True)
    torch.testing.assert_close(normed.tokens(), model.forward_features(x), atol=1e-6, rtol=0)


@torch.no_grad()
def test_grid_and_layer_choice():
    model = randomize_(ViT(CFG)).eval()
    x = _images(CFG)
    tokens = model.forward_intermediates(x, layers=2)
    grid = model.forward_intermediates(x, layers=[3, 2], output="grid")
    assert tokens.layers == grid.layers == [2, 3]
    g = grid.patches[1]
    assert g.shape == (2, 64, 6, 4)  # (B, D, gh, gw) for a 48x32 image, patch 8
    # grid position (r, c) is patch r * gw + c
    torch.testing.assert_close(g[:, :, 1, 3], tokens.patches[1][:, 1 * 4 + 3])
    with pytest.raises(ValueError, match="layer 4: the model has 4 blocks"):
        model.forward_intermediates(x, layers=[4])
    with pytest.raises(ValueError, match="layers=0"):
        model.forward_intermediates(x, layers=0)
    with pytest.raises(ValueError, match="output 'nchw'"):
        model.forward_intermediates(x, output="nchw")


@pytest.mark.parametrize("cfg", [CFG, CFG.replace(pool="mean", class_token=False)], ids=["cls", "no-prefix"])
@pytest.mark.parametrize("norm", [False, True])
@torch.no_grad()
def test_matches_timm_forward_intermediates(cfg, norm):
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    from vitkit.formats.timm import timm_kwargs, to_timm

    ours = randomize_(ViT(cfg)).eval()
    theirs = timm_vit.VisionTransformer(**timm_kwargs(cfg)).eval()
    theirs.load_state_dict(to_timm(ours.state_dict()))
    x = _images(cfg)
    layers = [0, 2]
    mine = ours.forward_intermediates(x, layers=layers, output="grid", norm=norm)
    ref = theirs.forward_intermediates(x, indices=layers, norm=norm, output_fmt="NCHW",
                                       intermediates_only=True, return_prefix_tokens=cfg.class_token)
    for i in range(len(layers)):
        grid, prefix = ref[i] if cfg.class_token else (ref[i], None)
        assert grid.abs().max() > 0.1
        torch.testing.assert_close(mine.patches[i], grid, atol=1e-5, rtol=0)
        if prefix is not None:
            torch.testing.assert_close(mine.prefix[i], prefix, atol=1e-5, rtol=0)
        else:
            assert mine.prefix[i].shape[1] == 0
    nlc = theirs.forward_intermediates(x, indices=2, output_fmt="NLC", intermediates_only=True)
    last2 = ours.forward_intermediates(x, layers=2).patches[-1]
    torch.testing.assert_close(last2, nlc[-1], atol=1e-5, rtol=0)
