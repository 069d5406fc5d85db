"""vitkit against independent implementations: identical weights must give identical logits."""

import pytest
import torch
from conftest import randomize_

from vitkit.config import ViTConfig, variant
from vitkit.formats.hf import config_to_hf, from_hf, to_hf
from vitkit.formats.timm import from_timm, timm_kwargs, to_timm
from vitkit.model import ViT

timm_vit = pytest.importorskip("timm.models.vision_transformer")
transformers = pytest.importorskip("transformers")

SMALL = ViTConfig(image_size=(48, 32), patch_size=8, hidden_size=64, num_layers=3, num_heads=4,
                  mlp_size=128, num_classes=7)
SMALL_SQ = SMALL.replace(image_size=48)
TOL = 1e-5


def _pair_timm(cfg):
    ours = randomize_(ViT(cfg)).eval()
    theirs = timm_vit.VisionTransformer(**timm_kwargs(cfg)).eval()
    theirs.load_state_dict(to_timm(ours.state_dict()))
    return ours, theirs


def _pair_hf(cfg):
    ours = randomize_(ViT(cfg)).eval()
    theirs = transformers.ViTForImageClassification(
        transformers.ViTConfig(**config_to_hf(cfg))).eval()
    naming = "module" if any(".layers." in k for k in theirs.state_dict()) else "file"
    theirs.load_state_dict(to_hf(ours.state_dict(), naming=naming), strict=True)
    return ours, theirs


def _images(cfg, n=2, seed=1):
    h, w = cfg.image_hw
    return torch.randn(n, cfg.num_channels, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cfg", [variant("B/16"), SMALL, SMALL.replace(num_channels=1)],
                         ids=["B16", "small", "small-gray"])
@torch.no_grad()
def test_matches_timm(cfg):
    ours, theirs = _pair_timm(cfg)
    x = _images(cfg)
    a, b = ours(x), theirs(x)
    assert a.abs().max() > 0.1  # logits are not trivially zero
    assert (a - b).abs().max().item() <= TOL
    torch.testing.assert_close(ours.forward_features(x), theirs.forward_features(x),
                               atol=TOL, rtol=0)


@torch.no_grad()
def test_mean_pool_matches_timm_avg():
    cfg = SMALL.replace(pool="mean")
    ours, theirs = _pair_timm(cfg)
    assert theirs.global_pool == "avg" and isinstance(theirs.fc_norm, torch.nn.Identity)
    x = _images(cfg)
    assert (ours(x) - theirs(x)).abs().max().item() <= TOL


@torch.no_grad()
def test_tanh_gelu_matches_timm():
    cfg = SMALL.replace(gelu="tanh")
    ours, theirs = _pair_timm(cfg)
    x = _images(cfg)
    assert (ours(x) - theirs(x)).abs().max().item() <= TOL


@pytest.mark.parametrize("cfg", [variant("B/16"), SMALL_SQ], ids=["B16", "small"])
@torch.no_grad()
def test_matches_huggingface(cfg):
    ours, theirs = _pair_hf(cfg)
    assert theirs.config.layer_norm_eps == 1e-6
    x = _images(cfg)
    a, b = ours(x), theirs(pixel_values=x).logits
    assert a.abs().max() > 0.1
    assert (a - b).abs().max().item() <= TOL


def test_key_mappings_round_trip(tiny_model):
    sd = tiny_model.state_dict()
    hf_module = lambda d: to_hf(d, naming="module")
    for there, back in [(to_timm, from_timm), (to_hf, from_hf), (hf_module, from_hf)]:
        again = back(there(sd))
        assert again.keys() == sd.keys()
        for k in sd:
            assert torch.equal(again[k], sd[k]), k


# timm's registered vit_huge_patch14_224 is headless (num_classes=0): 630,764,800 parameters;
# with a 1000-class head it has 1280 * 1000 + 1000 more.
@pytest.mark.parametrize("name,classes,expected", [
    ("Ti/16", 1000, 5_717_416), ("S/16", 1000, 22_050_664), ("B/16", 1000, 86_567_656),
    ("L/16", 1000, 304_326_632), ("H/14", 0, 630_764_800), ("H/14", 1000, 632_045_800),
])
def test_param_counts_equal_timm(name, classes, expected):
    with torch.device("meta"):
        ours = ViT.from_name(name, num_classes=classes)
        theirs = timm_vit.VisionTransformer(**timm_kwargs(ours.config))
    assert ours.num_params() == expected
    assert sum(p.numel() for p in theirs.parameters()) == expected
