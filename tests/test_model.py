"""The model's behaviour on its own: shapes, errors, attention, gradients, heads."""

import math

import pytest
import torch
from conftest import randomize_

from vitkit.config import ViTConfig, variant, variant_names
from vitkit.model import ViT


@pytest.mark.parametrize("name", variant_names())
def test_every_named_variant_shapes(name):
    size, patch = name.split("/")
    patch = int(patch)
    image = 224 if 224 % patch == 0 else patch * 16
    cfg = variant(name, image_size=image, num_classes=10)
    # large models on the meta device: shapes are checked without allocating or computing
    device = "meta" if size in ("L", "H") else "cpu"
    if device == "cpu" and cfg.num_patches > 256:
        cfg = cfg.replace(image_size=patch * 8)
    with torch.device(device):
        model = ViT(cfg).eval()
        x = torch.zeros(2, 3, *cfg.image_hw)
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
    assert feats.shape == (2, cfg.num_patches + 1, cfg.hidden_size)
    assert logits.shape == (2, 10)


def test_variant_table_values():
    assert (variant("H/14").hidden_size, variant("H/14").head_dim) == (1280, 80)
    cfg = variant("Ti/16")
    assert (cfg.hidden_size, cfg.num_layers, cfg.mlp_size, cfg.num_heads) == (192, 12, 768, 3)
    with pytest.raises(ValueError, match="unknown variant 'X/16'"):
        variant("X/16")


def test_grayscale_and_non_square():
    cfg = ViTConfig(image_size=(24, 40), patch_size=8, num_channels=1, hidden_size=32,
                    num_layers=1, num_heads=2, mlp_size=64, num_classes=3)
    model = ViT(cfg)
    out = model(torch.randn(4, 1, 24, 40))
    assert out.shape == (4, 3)
    assert model.patch_embed.proj.weight.shape == (32, 1, 8, 8)


def test_non_divisible_size_error_names_sizes(tiny_model):
    with pytest.raises(ValueError, match=r"image size 30x32 is not a multiple of patch size 8"):
        tiny_model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"image size 30x30 is not a multiple of patch size 8"):
        ViTConfig(image_size=30, patch_size=8)


def test_patch_embedding_is_a_linear_map_of_flattened_patches(tiny_model):
    """The strided convolution equals flatten-each-patch then one matrix product."""
    x = torch.randn(2, 3, 32, 32)
    p, d = 8, tiny_model.config.hidden_size
    patches = x.unfold(2, p, p).unfold(3, p, p)  # B, C, gh, gw, p, p
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(2, 16, 3 * p * p)
    proj = tiny_model.patch_embed.proj
    expected = patches @ proj.weight.reshape(d, -1).T + proj.bias
    torch.testing.assert_close(tiny_model.patch_embed(x), expected, atol=1e-5, rtol=1e-5)


def test_attention_weights_equal_explicit_softmax(tiny_model):
    x = torch.randn(2, 3, 32, 32)
    feats, maps = tiny_model.forward_features(x, return_attention=True)
    assert len(maps) == tiny_model.config.num_layers
    # recompute layer by layer from the block inputs
    with torch.no_grad():
        h = tiny_model.patch_embed(x)
        h = torch.cat([tiny_model.cls_token.expand(2, -1, -1), h], 1) + tiny_model.pos_embed
        for block, got in zip(tiny_model.blocks, maps, strict=True):
            a = block.attn
            y = block.norm1(h)
            q, k, _ = a.qkv(y).chunk(3, dim=-1)
            q, k = (t.view(2, -1, a.num_heads, a.head_dim).transpose(1, 2) for t in (q, k))
            want = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(a.head_dim), dim=-1)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
            assert torch.allclose(got.sum(-1), torch.ones(()), atol=1e-5)
            h, _ = block(h)
    # capturing attention does not change the output
    torch.testing.assert_close(feats, tiny_model.forward_features(x), atol=1e-5, rtol=1e-5)
    assert tiny_model.attention_maps(x)[0].shape == (2, 3, 17, 17)


def test_gradients_reach_every_parameter():
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=4,
                    mlp_size=64, num_classes=4, representation_size=16, drop_path=0.1,
                    dropout=0.1, attention_dropout=0.1)
    model = randomize_(ViT(cfg)).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 16, 16)),
                                             torch.arange(8) % 4)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_drop_path_linear_rule_and_eval_identity():
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=5, num_heads=4,
                    mlp_size=64, num_classes=4, drop_path=0.2)
    model = ViT(cfg)
    rates = [getattr(b.drop_path, "p", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("pos", ["learn", "sincos2d", "none"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_position_embedding_and_pooling_options(pos, pool):
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=1, num_heads=4,
                    mlp_size=64, num_classes=4, pos_embed=pos, pool=pool)
    model = ViT(cfg)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    trainable = {n for n, _ in model.named_parameters()}
    assert ("pos_embed" in trainable) == (pos == "learn")


def test_sincos_table_matches_big_vision_layout():
    from vitkit.posemb import sincos_2d

    pe = sincos_2d((2, 3), 8)[0]  # omega = [1, 1e-4] for dim 8
    # row for grid position (y=1, x=2): [sin x, sin x/1e4, cos x, cos x/1e4, sin y, ..., cos y..]
    x, y = 2.0, 1.0
    want = torch.tensor([math.sin(x), math.sin(x / 1e4), math.cos(x), math.cos(x / 1e4),
                         math.sin(y), math.sin(y / 1e4), math.cos(y), math.cos(y / 1e4)])
    torch.testing.assert_close(pe[1 * 3 + 2], want)


def test_other_input_size_interpolates_position_embeddings(tiny_model):
    out = tiny_model(torch.randn(1, 3, 48, 64))
    assert out.shape == (1, 5)
    # same size as trained: the stored table is used as is
    assert tiny_model.pos_embed_for((4, 4)) is tiny_model.pos_embed


def test_init_follows_official_code():
    model = ViT(ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_layers=2, num_heads=4,
                          mlp_size=128, num_classes=10, representation_size=32))
    assert model.head.weight.abs().sum() == 0 and model.head.bias.abs().sum() == 0
    assert model.cls_token.abs().sum() == 0
    assert 0.015 < model.pos_embed.std() < 0.025
    w = model.patch_embed.proj.weight
    assert w.std().item() == pytest.approx((1 / w[0].numel()) ** 0.5, rel=0.1)
    fc1 = model.blocks[0].mlp.fc1
    bound = (6 / (fc1.in_features + fc1.out_features)) ** 0.5
    assert fc1.weight.abs().max() <= bound and fc1.weight.abs().max() > 0.9 * bound
    assert 0 < fc1.bias.abs().max() < 1e-4
    assert model.blocks[0].attn.qkv.bias.abs().sum() == 0


def test_head_options(tiny_model):
    x = torch.randn(3, 3, 32, 32)
    feats = tiny_model.forward_features(x)
    assert tiny_model.forward_head(feats, pre_logits=True).shape == (3, 48)
    probs = tiny_model.predict_proba(x)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    tiny_model.reset_classifier(7)
    assert tiny_model.config.num_classes == 7
    torch.testing.assert_close(tiny_model(x), torch.zeros(3, 7))


def test_pre_logits_layer_and_drop():
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=1, num_heads=4,
                    mlp_size=64, num_classes=4, representation_size=24)
    model = randomize_(ViT(cfg))
    feats = model.forward_features(torch.randn(2, 3, 16, 16))
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, 24) and pre.abs().max() <= 1  # tanh
    model.drop_pre_logits()
    assert model.config.representation_size is None
    assert model.head.in_features == 32
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_conv_stem_hybrid():
    cfg = ViTConfig(image_size=32, patch_size=4, hidden_size=32, num_layers=1, num_heads=4,
                    mlp_size=64, num_classes=10, stem="conv", stem_channels=16)
    model = ViT(cfg)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.patch_embed.proj.in_channels == 16


@pytest.mark.parametrize("stride, widths", [(1, [16, 16]), (2, [8, 16]), (4, [4, 8, 16])])
def test_conv_stem_strides(stride, widths):
    """Stride 2^k: one full-resolution conv, then k halvings that double the width."""
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=4,
                    mlp_size=64, num_classes=10, stem="conv", stem_channels=16, stem_stride=stride)
    model = ViT(cfg)
    convs = [m for m in model.patch_embed.stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == widths
    assert model.patch_embed.proj.kernel_size == (8 // stride,) * 2
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 17, 32)
    with pytest.raises(ValueError, match="power of 2, got 3"):
        cfg.replace(stem_stride=3)


def test_config_round_trip():
    cfg = variant("S/16", image_size=(32, 64), num_classes=3)
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ViTConfig keys: bogus"):
        ViTConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_class_token_shortcut_gives_the_full_model_logits_and_gradients(dtype):
    """forward() runs the last block for the class token alone; logits and every gradient
    must equal those of the full computation (forward_features, then the head)."""
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=3, num_heads=4, mlp_size=64,
                    num_classes=5, representation_size=24)
    model = ViT(cfg)
    randomize_(model)
    x = torch.randn(3, 3, 16, 16)
    grads = []
    outs = []
    for full in (True, False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model.forward_head(model.forward_features(x)) if full else model(x)
        out.float().square().sum().backward()
        outs.append(out.float().detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(outs[1], outs[0], atol=tol, rtol=tol)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=tol, rtol=tol, msg=name)
