"""Position-embedding resizing (paper Section 3.2) against timm's resample and scipy's zoom."""

import pytest
import scipy.ndimage
import torch

import vitkit
from vitkit.checkpoint import save_pretrained
from vitkit.config import ViTConfig
from vitkit.model import ViT
from vitkit.posemb import resample_pos_embed

timm_layers = pytest.importorskip("timm.layers")


def table(grid=(14, 14), dim=32, prefix=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, prefix + grid[0] * grid[1], dim, generator=g)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("new", [(24, 24), (10, 10), (20, 28)], ids=["224to384", "down", "non-square"])
def test_resize_equals_timm(mode, new):
    pe = table()
    ours = resample_pos_embed(pe, new, (14, 14), num_prefix_tokens=1, mode=mode)
    theirs = timm_layers.resample_abs_pos_embed(pe, list(new), [14, 14], num_prefix_tokens=1,
                                                interpolation=mode, antialias=True)
    assert ours.shape == (1, 1 + new[0] * new[1], 32)
    assert torch.equal(ours[:, :1], pe[:, :1])  # the class-token row is kept as it is
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("new", [(24, 24), (9, 9), (20, 30)])
def test_jax_mode_equals_scipy_zoom_order1(new):
    """The official code: scipy.ndimage.zoom(grid, (gh'/gh, gw'/gw, 1), order=1)."""
    pe = table(dim=8).double()
    ours = resample_pos_embed(pe, new, (14, 14), num_prefix_tokens=1, mode="jax")
    grid = pe[0, 1:].reshape(14, 14, 8).numpy()
    zoomed = scipy.ndimage.zoom(grid, (new[0] / 14, new[1] / 14, 1), order=1)
    assert zoomed.shape[:2] == new
    torch.testing.assert_close(ours[0, 1:], torch.from_numpy(zoomed).reshape(-1, 8), atol=1e-12, rtol=0)
    assert torch.equal(ours[:, :1], pe[:, :1])


@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "jax"])
def test_load_resizes_with_each_mode(tmp_path, mode):
    cfg = ViTConfig(image_size=224, patch_size=16, hidden_size=32, num_layers=1, num_heads=2, mlp_size=32,
                    num_classes=3)
    model = ViT(cfg)
    save_pretrained(model, tmp_path / "m")
    big = vitkit.load(tmp_path / "m", image_size=384, resize_mode=mode)
    expected = resample_pos_embed(model.pos_embed.detach(), (24, 24), (14, 14), 1, mode=mode)
    assert big.config.image_hw == (384, 384)
    torch.testing.assert_close(big.pos_embed.detach(), expected, atol=0, rtol=0)
    assert big(torch.zeros(1, 3, 384, 384)).shape == (1, 3)
