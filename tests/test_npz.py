"""Official .npz checkpoints: vitkit's exporter against timm's own npz loader, and npz files
written here from timm models (vit_jax and big_vision naming) loaded by vitkit."""

import numpy as np
import pytest
import torch
from test_loading import assert_same, images, randomize_all_

import vitkit
from vitkit.config import ViTConfig
from vitkit.formats.timm import timm_kwargs
from vitkit.formats.writer import write_model
from vitkit.loading import load_with_report
from vitkit.model import ViT

timm_vit = pytest.importorskip("timm.models.vision_transformer")

CFG = ViTConfig(image_size=64, patch_size=16, hidden_size=64, num_layers=2, num_heads=4, mlp_size=128,
                num_classes=7, gelu="tanh")  # the official code's GELU
NAMES = {"vit_jax": ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
         "big_vision": ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")}


def write_official(model, path, naming="vit_jax", prefix="", scan=False, extra=None):
    """A small independent writer: a timm VisionTransformer's weights under the official
    flax names, as the vit_jax and big_vision repositories store them."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    heads = model.blocks[0].attn.num_heads
    d = sd["patch_embed.proj.weight"].shape[0]
    mha, ln2, mlp = NAMES[naming]
    w = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"],
         "Transformer/encoder_norm/scale": sd["norm.weight"],
         "Transformer/encoder_norm/bias": sd["norm.bias"]}
    if "cls_token" in sd:
        w["cls"] = sd["cls_token"]
    pos_key = "Transformer/posembed_input/pos_embedding" if naming == "vit_jax" else "pos_embedding"
    w[pos_key] = sd["pos_embed"]
    if "head.weight" in sd:
        w["head/kernel"], w["head/bias"] = sd["head.weight"].T, sd["head.bias"]
    blocks = []
    for i in range(len(model.blocks)):
        o, b = f"blocks.{i}.", {}
        b["LayerNorm_0/scale"], b["LayerNorm_0/bias"] = sd[o + "norm1.weight"], sd[o + "norm1.bias"]
        q, k, v = np.split(sd[o + "attn.qkv.weight"], 3)
        qb, kb, vb = np.split(sd[o + "attn.qkv.bias"], 3)
        for n, m, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            b[f"{mha}/{n}/kernel"] = m.T.reshape(d, heads, d // heads)
            b[f"{mha}/{n}/bias"] = bias.reshape(heads, d // heads)
        b[f"{mha}/out/kernel"] = sd[o + "attn.proj.weight"].T.reshape(heads, d // heads, d)
        b[f"{mha}/out/bias"] = sd[o + "attn.proj.bias"]
        b[f"{ln2}/scale"], b[f"{ln2}/bias"] = sd[o + "norm2.weight"], sd[o + "norm2.bias"]
        for j in (0, 1):
            b[f"{mlp}/Dense_{j}/kernel"] = sd[f"{o}mlp.fc{j + 1}.weight"].T
            b[f"{mlp}/Dense_{j}/bias"] = sd[f"{o}mlp.fc{j + 1}.bias"]
        blocks.append(b)
    if scan:
        for name in blocks[0]:
            w[f"Transformer/encoderblock/{name}"] = np.stack([b[name] for b in blocks])
    else:
        for i, b in enumerate(blocks):
            w.update({f"Transformer/encoderblock_{i}/{n}": a for n, a in b.items()})
    w.update(extra or {})
    arrays = {prefix + k: a for k, a in w.items()}
    if prefix:  # training checkpoints also hold optimizer state
        arrays["opt/state/step"] = np.array(7)
    np.savez(path, **arrays)


def timm_for(cfg, **kw):
    return timm_vit.VisionTransformer(**{**timm_kwargs(cfg), **kw}).eval()


# ---- vitkit's exporter, read by timm's npz loader ---------------------------------------------
@pytest.mark.parametrize("naming,cfg", [
    ("vit_jax", CFG), ("big_vision", CFG),
    ("big_vision", CFG.replace(class_token=False, pool="mean")),
], ids=["vit_jax", "big_vision-tok", "big_vision-gap"])
@torch.no_grad()
def test_exported_npz_loads_in_timm(tmp_path, naming, cfg):
    ours = randomize_all_(ViT(cfg))
    path, _ = write_model(ours, tmp_path / "vit.npz", to="npz", naming=naming)
    # big_vision adds position embeddings to the patches only: timm's no_embed_class
    theirs = timm_for(cfg, no_embed_class=naming == "big_vision")
    timm_vit._load_weights(theirs, str(path))
    x = images(64)
    assert_same(theirs(x), ours(x))


# ---- npz files written from timm models, read by vitkit ---------------------------------------
@pytest.mark.parametrize("naming,prefix,scan", [
    ("vit_jax", "", False), ("vit_jax", "opt/target/", False),
    ("big_vision", "", False), ("big_vision", "params/", True),
])
@torch.no_grad()
def test_official_npz_loads_in_vitkit(tmp_path, naming, prefix, scan):
    theirs = randomize_all_(timm_for(CFG, no_embed_class=naming == "big_vision"))
    write_official(theirs, tmp_path / "vit.npz", naming, prefix, scan)
    ours, report = load_with_report(tmp_path / "vit.npz")
    assert report.format == "npz" and report.detail.startswith(naming)
    assert ours.config == CFG  # heads read from the query kernel, GELU tanh as the official code
    if prefix:
        assert "opt/state/step" in str(report)
    x = images(64)
    assert_same(ours(x), theirs(x))


@torch.no_grad()
def test_imagenet21k_style_file(tmp_path):
    """The original ImageNet-21k releases: a pre-logits layer and an all-zero head."""
    theirs = randomize_all_(timm_for(CFG))
    g = torch.Generator().manual_seed(3)
    pre_w, pre_b = 0.2 * torch.randn(64, 48, generator=g), 0.1 * torch.randn(48, generator=g)
    extra = {"pre_logits/kernel": pre_w.numpy(), "pre_logits/bias": pre_b.numpy(),
             "head/kernel": np.zeros((48, 21843), np.float32), "head/bias": np.zeros(21843, np.float32)}
    write_official(theirs, tmp_path / "in21k.npz", extra=extra)
    ours, report = load_with_report(tmp_path / "in21k.npz")
    assert ours.config.num_classes == 0 and ours.config.representation_size == 48
    assert "head (21843 classes): all zeros" in str(report)
    x = images(64)
    expected = torch.tanh(theirs.forward_head(theirs.forward_features(x), pre_logits=True) @ pre_w + pre_b)
    assert_same(ours(x), expected)
    tuned, report = load_with_report(tmp_path / "in21k.npz", num_classes=10, image_size=96)
    assert tuned.config.representation_size is None and tuned.head.out_features == 10
    assert "pre_logits (48 wide)" in "; ".join(report.dropped)
    assert report.resized == ["pos_embed grid 4x4 -> 6x6 (bicubic; class-token row kept)"]


def test_npz_round_trip_through_vitkit(tmp_path):
    ours = randomize_all_(ViT(CFG.replace(representation_size=16)))
    for naming in ("vit_jax", "big_vision"):
        path, _ = write_model(ours, tmp_path / f"{naming}.npz", to="npz", naming=naming)
        again = vitkit.load(path)
        x = images(64)
        assert again.config == ours.config
        assert_same(again(x), ours(x))


def test_npz_unknown_and_unsupported_arrays(tmp_path):
    theirs = timm_for(CFG)
    write_official(theirs, tmp_path / "extra.npz", extra={"Transformer/encoderblock_0/Adapter/kernel":
                                                          np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"extra\.npz: unexpected keys .*Adapter/kernel"):
        vitkit.load(tmp_path / "extra.npz")
    _, report = load_with_report(tmp_path / "extra.npz", strict=False)
    assert report.unexpected == ["Transformer/encoderblock_0/Adapter/kernel"]
    write_official(theirs, tmp_path / "hybrid.npz", extra={"conv_root/kernel": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="hybrid ViT"):
        vitkit.load(tmp_path / "hybrid.npz")
