"""`vitkit convert SRC OUT --to FORMAT`: every output is read back by its own library."""

import pytest
import torch
from safetensors.torch import load_file
from test_loading import assert_same, images, randomize_all_

import vitkit
from vitkit.checkpoint import read_meta, save_pretrained
from vitkit.cli import main
from vitkit.config import ViTConfig
from vitkit.formats.timm import timm_kwargs
from vitkit.model import ViT

timm_vit = pytest.importorskip("timm.models.vision_transformer")
transformers = pytest.importorskip("transformers")

CFG = ViTConfig(image_size=48, patch_size=16, hidden_size=64, num_layers=2, num_heads=4, mlp_size=128,
                num_classes=6)


@pytest.fixture
def src(tmp_path):
    model = randomize_all_(ViT(CFG))
    save_pretrained(model, tmp_path / "src", extra={"classes": [f"c{i}" for i in range(6)]})
    return model, tmp_path / "src"


def run(capsys, *argv):
    main([str(a) for a in argv])
    return capsys.readouterr().out


@torch.no_grad()
def test_convert_to_timm(tmp_path, capsys, src):
    model, path = src
    x = images(48)
    for name in ("vit.pth", "vit.safetensors"):
        out = run(capsys, "convert", path, tmp_path / name, "--to", "timm")
        assert "vitkit (config.json + model.safetensors)" in out and f"wrote {tmp_path / name} (timm)" in out
        theirs = timm_vit.VisionTransformer(**timm_kwargs(CFG)).eval()
        sd = (torch.load(tmp_path / name, weights_only=True) if name.endswith(".pth")
              else load_file(str(tmp_path / name)))
        theirs.load_state_dict(sd)
        assert_same(theirs(x), model(x))


@torch.no_grad()
def test_convert_to_hf(tmp_path, capsys, src):
    model, path = src
    run(capsys, "convert", path, tmp_path / "hf", "--to", "hf")
    theirs = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.id2label[2] == "c2"
    x = images(48)
    assert_same(theirs(pixel_values=x).logits, model(x))


@torch.no_grad()
def test_convert_hf_to_npz_big_vision_and_back(tmp_path, capsys):
    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128, image_size=32, patch_size=16, num_labels=3,
                                 hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    theirs = randomize_all_(transformers.ViTForImageClassification(cfg))
    theirs.save_pretrained(tmp_path / "hf")
    out = run(capsys, "convert", tmp_path / "hf", tmp_path / "bv.npz", "--to", "npz",
              "--naming", "big_vision")
    assert "hf (model.safetensors, hidden_act gelu_pytorch_tanh)" in out
    back = vitkit.load(tmp_path / "bv.npz")
    x = images(32)
    assert_same(back(x), theirs(pixel_values=x).logits)


def test_convert_to_vitkit_resized_with_new_head(tmp_path, capsys, src):
    _, path = src
    out = run(capsys, "convert", path, tmp_path / "ft", "--image_size", "96", "--num_classes", "3",
              "--resize_mode", "jax")
    assert "pos_embed grid 3x3 -> 6x6 (jax" in out
    assert "6-class head replaced by a zero-initialized 3-class head" in out
    model, meta = ViT.from_pretrained(tmp_path / "ft"), read_meta(tmp_path / "ft")
    assert model.config.image_hw == (96, 96) and model.config.num_classes == 3
    assert not model.head.weight.any() and "classes" not in meta


def test_convert_errors_are_one_line_exit_2(tmp_path, capsys, src):
    _, path = src
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "out"), "--to", "timm"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"vitkit: error: {tmp_path / 'missing.pth'}: no such file or directory"
    rep = ViT(CFG.replace(representation_size=16))
    save_pretrained(rep, tmp_path / "rep")
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path / "rep"), str(tmp_path / "hf"), "--to", "hf"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no pre-logits layer" in err
    assert not (tmp_path / "hf").exists()
