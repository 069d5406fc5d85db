"""vitkit.load on files written by timm, transformers and torchvision themselves: the loaded
model must compute the same logits as the library that wrote them."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import randomize_
from safetensors.torch import save_file

import vitkit
from vitkit.checkpoint import save_pretrained
from vitkit.config import ViTConfig
from vitkit.files import atomic_write_json
from vitkit.loading import load_with_report
from vitkit.model import ViT

timm_vit = pytest.importorskip("timm.models.vision_transformer")
timm_layers = pytest.importorskip("timm.layers")
transformers = pytest.importorskip("transformers")
tv_models = pytest.importorskip("torchvision.models")

TOL = 1e-5


def randomize_all_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every parameter (heads and biases too), LayerNorm scales near 1,
    whatever the library calls its norms."""
    randomize_(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
    return model.eval()


def images(size, n=2, channels=3, seed=1):
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(n, channels, h, w, generator=torch.Generator().manual_seed(seed))


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert a.abs().max() > 0.1, "outputs are trivially small"
    assert (a - b).abs().max().item() <= TOL


def timm_model(**kw) -> torch.nn.Module:
    return randomize_all_(timm_vit.VisionTransformer(**kw))


# ---- timm -------------------------------------------------------------------------------------
@torch.no_grad()
def test_timm_b16_pth(tmp_path):
    theirs = timm_model(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                        num_classes=1000)
    path = tmp_path / "vit_b16.pth"
    torch.save(theirs.state_dict(), path)
    ours, report = load_with_report(path)
    assert report.format == "timm" and report.variant == "B/16"
    assert "num_heads 12 assumed" in str(report)
    x = images(224, n=1)
    assert_same(ours(x), theirs(x))


@torch.no_grad()
def test_timm_s32_safetensors_from_pretrained(tmp_path):
    theirs = timm_model(img_size=224, patch_size=32, embed_dim=384, depth=12, num_heads=6, num_classes=10)
    path = tmp_path / "s32.safetensors"
    save_file(theirs.state_dict(), str(path))
    ours = ViT.from_pretrained(path)
    assert (ours.config.patch_size, ours.config.hidden_size, ours.config.num_classes) == (32, 384, 10)
    assert not ours.training
    x = images(224)
    assert_same(ours(x), theirs(x))


SMALL = dict(patch_size=32, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=7)


@torch.no_grad()
def test_timm_384_input(tmp_path):
    theirs = timm_model(img_size=384, **SMALL)
    torch.save(theirs.state_dict(), tmp_path / "m.pth")
    ours = vitkit.load(tmp_path / "m.pth", num_heads=4)
    assert ours.config.image_hw == (384, 384) and ours.config.mlp_size == 128
    x = images(384)
    assert_same(ours(x), theirs(x))


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@torch.no_grad()
def test_timm_resized_to_384_equals_timm_resample(tmp_path, mode):
    small = timm_model(img_size=224, **SMALL)
    torch.save(small.state_dict(), tmp_path / "m.pth")
    big = timm_vit.VisionTransformer(img_size=384, **SMALL).eval()
    sd = small.state_dict()
    sd["pos_embed"] = timm_layers.resample_abs_pos_embed(sd["pos_embed"], (12, 12), interpolation=mode)
    big.load_state_dict(sd)
    ours, report = load_with_report(tmp_path / "m.pth", image_size=384, resize_mode=mode, num_heads=4)
    assert report.resized == [f"pos_embed grid 7x7 -> 12x12 ({mode}; class-token row kept)"]
    x = images(384)
    assert_same(ours(x), big(x))


@torch.no_grad()
def test_timm_optional_parts_tolerated(tmp_path):
    """Average pooling without a class token, no head, qkv without bias, a position table
    without the class row (no_embed_class), a training-checkpoint wrapper with 'module.'."""
    cases = [dict(class_token=False, global_pool="avg", fc_norm=False),
             dict(num_classes=0), dict(qkv_bias=False), dict(no_embed_class=True)]
    for i, kw in enumerate(cases):
        theirs = timm_model(img_size=64, **{**SMALL, **kw})
        sd = {f"module.{k}": v for k, v in theirs.state_dict().items()}
        torch.save({"state_dict": sd, "epoch": 3, "arch": "vit"}, tmp_path / f"{i}.pth.tar")
        ours = vitkit.load(tmp_path / f"{i}.pth.tar", num_heads=4)
        x = images(64)
        assert_same(ours(x), theirs(x))


@pytest.mark.parametrize("kw,part", [(dict(init_values=1e-5), "ls1."),
                                     (dict(global_pool="avg", class_token=False), "fc_norm."),
                                     (dict(qk_norm=True), "q_norm.")])
def test_timm_architecture_changes_refused_by_name(tmp_path, kw, part):
    theirs = timm_vit.VisionTransformer(img_size=64, **SMALL, **kw)
    torch.save(theirs.state_dict(), tmp_path / "m.pth")
    with pytest.raises(ValueError, match=part) as e:
        vitkit.load(tmp_path / "m.pth", num_heads=4)
    assert str(tmp_path / "m.pth") in str(e.value) and "\n" not in str(e.value)


# ---- Hugging Face ------------------------------------------------------------------------------
def hf_config(**kw):
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                image_size=64, patch_size=16)
    return transformers.ViTConfig(**{**base, **kw})


@torch.no_grad()
def test_hf_s32_classifier(tmp_path):
    cfg = hf_config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                    image_size=224, patch_size=32, num_labels=10)
    theirs = randomize_all_(transformers.ViTForImageClassification(cfg))
    theirs.save_pretrained(tmp_path / "hf")
    ours, report = load_with_report(tmp_path / "hf")
    assert report.format == "hf" and report.variant == "S/32"
    assert ours.config.layer_norm_eps == 1e-12  # transformers' default, honoured
    x = images(224)
    assert_same(ours(x), theirs(pixel_values=x).logits)


@torch.no_grad()
def test_hf_384_tanh_gelu_and_bin_file(tmp_path):
    cfg = hf_config(image_size=384, patch_size=32, num_labels=5, hidden_act="gelu_new", layer_norm_eps=1e-6)
    theirs = randomize_all_(transformers.ViTForImageClassification(cfg))
    d = tmp_path / "hf"
    d.mkdir()
    cfg.save_pretrained(d)
    torch.save(theirs.state_dict(), d / "pytorch_model.bin")
    ours = vitkit.load(d)
    assert (ours.config.gelu, ours.config.layer_norm_eps, ours.config.image_hw) == ("tanh", 1e-6, (384, 384))
    x = images(384)
    assert_same(ours(x), theirs(pixel_values=x).logits)


@torch.no_grad()
def test_hf_vitmodel_pooler_is_pre_logits(tmp_path):
    theirs = randomize_all_(transformers.ViTModel(hf_config(pooler_output_size=48)))
    theirs.save_pretrained(tmp_path / "hf")  # keys without the "vit." prefix
    ours, report = load_with_report(tmp_path / "hf")
    assert (ours.config.representation_size, ours.config.num_classes) == (48, 0)
    x = images(64)
    pooled = theirs(pixel_values=x).pooler_output
    assert_same(ours(x), pooled)
    classifier = torch.nn.Linear(48, 5)
    ours.reset_classifier(5)
    ours.head.load_state_dict(classifier.state_dict())
    assert_same(ours(x), classifier(pooled))


# ---- torchvision -------------------------------------------------------------------------------
@pytest.mark.parametrize("rep", [None, 32])
@torch.no_grad()
def test_torchvision(tmp_path, rep):
    theirs = randomize_all_(tv_models.VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
        num_classes=7, representation_size=rep))
    torch.save(theirs.state_dict(), tmp_path / "tv.pth")
    ours, report = load_with_report(tmp_path / "tv.pth", num_heads=4)
    assert report.format == "torchvision"
    assert ours.config.representation_size == rep and ours.config.layer_norm_eps == 1e-6
    x = images(64)
    assert_same(ours(x), theirs(x))


@torch.no_grad()
def test_torchvision_heads_from_named_width(tmp_path):
    theirs = randomize_all_(tv_models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=3, hidden_dim=192, mlp_dim=64, num_classes=3))
    torch.save(theirs.state_dict(), tmp_path / "tv.bin")
    ours, report = load_with_report(tmp_path / "tv.bin")
    assert ours.config.num_heads == 3 and "num_heads 3 assumed from width 192" in str(report)
    x = images(32)
    assert_same(ours(x), theirs(x))


# ---- vitkit's own files ------------------------------------------------------------------------
@torch.no_grad()
def test_vitkit_dir_run_dir_and_weights_file(tmp_path):
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=40, num_layers=2, num_heads=5, mlp_size=64,
                    num_classes=4, representation_size=24, pos_embed="sincos2d", layer_norm_eps=1e-5)
    model = randomize_all_(ViT(cfg))
    save_pretrained(model, tmp_path / "model", extra={"classes": list("abcd")})
    run = tmp_path / "run"
    save_pretrained(model, run, extra={"train": {"epochs": 3}, "classes": list("abcd")})
    x = images(32)
    for path in (tmp_path / "model", run, run / "model.safetensors"):
        ours, report = load_with_report(path)
        assert report.format == "vitkit" and ours.config == cfg
        assert_same(ours(x), model(x))
    assert report.extra["classes"] == list("abcd")


# ---- head, resizing, strictness ----------------------------------------------------------------
def _small_vitkit(tmp_path, **kw):
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=3, mlp_size=96,
                    num_classes=5, **kw)
    model = randomize_all_(ViT(cfg))
    save_pretrained(model, tmp_path / "m")
    return model, tmp_path / "m"


def test_new_head_and_image_size(tmp_path):
    _, path = _small_vitkit(tmp_path, representation_size=16)
    model, report = load_with_report(path, image_size=64, num_classes=10)
    assert model.config.image_hw == (64, 64) and model.pos_embed.shape == (1, 65, 48)
    assert model.config.num_classes == 10 and model.config.representation_size is None
    assert not model.head.weight.any() and not model.head.bias.any()
    assert any(d.startswith("pre_logits") for d in report.dropped)
    kept = vitkit.load(path, num_classes=10, keep_pre_logits=True)
    assert kept.config.representation_size == 16 and kept.head.in_features == 16
    same = vitkit.load(path, num_classes=5)
    assert same.head.weight.any()  # the checkpoint's head, not a new one


def test_strict_errors_name_path_and_keys(tmp_path):
    theirs = timm_vit.VisionTransformer(img_size=64, **SMALL)
    sd = theirs.state_dict()
    sd["blocks.1.mlp.fc1.weight"] = torch.zeros(99, 64)
    sd["extra.thing"] = torch.zeros(3)
    del sd["norm.bias"]
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as e:
        vitkit.load(path, num_heads=4)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for part in ("norm.bias", "extra.thing", "blocks.1.mlp.fc1.weight (99, 64)"):
        assert part in msg
    model, report = load_with_report(path, num_heads=4, strict=False)
    assert report.missing == ["norm.bias"] and report.unexpected == ["extra.thing"]
    assert report.mismatched == ["blocks.1.mlp.fc1.weight (99, 64) vs model (128, 64)"]
    assert torch.equal(model.blocks[0].mlp.fc1.weight, sd["blocks.0.mlp.fc1.weight"])
    assert "missing: norm.bias" in str(report)


def test_unknown_keys_of_foreign_formats(tmp_path):
    tv = tv_models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=4, hidden_dim=64,
                                     mlp_dim=32, num_classes=3)
    sd = tv.state_dict()
    sd["encoder.layers.encoder_layer_0.adapter.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "tv.pth")
    with pytest.raises(ValueError, match=r"tv\.pth: unexpected keys .*adapter\.weight"):
        vitkit.load(tmp_path / "tv.pth", num_heads=4)
    _, report = load_with_report(tmp_path / "tv.pth", num_heads=4, strict=False)
    assert report.unexpected == ["encoder.layers.encoder_layer_0.adapter.weight"]


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        vitkit.load(tmp_path / "nowhere.pth")
    save_file({"encoder.weight": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a ViT state dict"):
        vitkit.load(tmp_path / "x.safetensors")
    timm_sd = timm_vit.VisionTransformer(img_size=32, **{**SMALL, "embed_dim": 40}).state_dict()
    torch.save(timm_sd, tmp_path / "w40.pth")
    with pytest.raises(ValueError, match="cannot infer num_heads for width 40"):
        vitkit.load(tmp_path / "w40.pth")
    with pytest.raises(ValueError, match="unknown load option"):
        vitkit.load(tmp_path / "w40.pth", heads=4)
    d = tmp_path / "deit"
    d.mkdir()
    atomic_write_json(d / "config.json", {"model_type": "deit"})
    with pytest.raises(ValueError, match="model_type 'deit'"):
        vitkit.load(d)


# ---- safety: nothing is unpickled --------------------------------------------------------------
class Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["pth", "bin", "npz", "pickle-as-npz"])
def test_malicious_pickle_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    evil = Evil()
    evil.marker = str(marker)
    path = tmp_path / f"evil.{'npz' if 'npz' in kind else kind}"
    if kind == "pth":
        torch.save({"patch_embed.proj.weight": torch.zeros(1), "x": evil}, path)
    elif kind == "bin":
        path.write_bytes(pickle.dumps({"x": evil}))
    elif kind == "npz":
        np.savez(path, **{"embedding/kernel": np.zeros((2, 2, 3, 4), np.float32),
                          "head/kernel": np.array([evil], dtype=object)})
    else:
        path.write_bytes(pickle.dumps(evil))
    with pytest.raises(ValueError, match="refused") as e:
        vitkit.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_hf_config_json_is_read_not_executed(tmp_path):
    """A config.json is data; a wrong one gives a clear error naming it."""
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        vitkit.load(d)
    (d / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        vitkit.load(d)


@torch.no_grad()
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_hybrid_config_read_from_bare_weights(tmp_path, stride):
    """A safetensors file of a hybrid, without its config.json: stem width, stride and patch size
    come from the conv shapes."""
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=3, mlp_size=96,
                    num_classes=5, stem="conv", stem_channels=16, stem_stride=stride)
    model = randomize_all_(ViT(cfg)).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    ours, _ = load_with_report(tmp_path / "w.safetensors", image_size=32, num_heads=3)
    assert (ours.config.stem_stride, ours.config.patch_size, ours.config.stem_channels) == (stride, 8, 16)
    x = images(32)
    assert_same(ours.eval()(x), model(x))
