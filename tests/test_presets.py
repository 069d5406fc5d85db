"""--load.preprocess: named input preparation for checkpoints that record none, checked against
timm's own pretrained configs and, on a real ImageNet DeiT-Tiny and a real bee photo, against
timm's own model and transform."""

import json
import socket
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import randomize_

from vitkit.checkpoint import save_pretrained
from vitkit.cli import main
from vitkit.config import ViTConfig
from vitkit.loading import LoadOptions, open_model
from vitkit.model import ViT
from vitkit.presets import DEFAULT_NAMES, NAMES, PRESETS, get_preset

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEIT = SHARED / "models" / "deit-tiny-patch16-224-in1k.safetensors"
IMAGENET_CLASSES = SHARED / "models" / "imagenet-1k-classes.txt"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera.tar.gz"
BEE = "hymenoptera/train/bees/1092977343_cb42b38d62.jpg"  # a bee on a flower, 500x333
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# Each preset and a model whose timm pretrained config it reproduces.
REPRESENTATIVES = {"imagenet": "convit_tiny.fb_in1k", "deit": "deit_tiny_patch16_224",
                   "inception": "vit_base_patch16_224.augreg_in21k_ft_in1k",
                   "clip": "vit_base_patch16_clip_224.openai"}


def timm_data_config(name: str) -> dict:
    timm = pytest.importorskip("timm")
    return timm.data.resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_is_timms_pretrained_config(preset):
    want = timm_data_config(REPRESENTATIVES[preset])
    got = get_preset(preset).for_channels(3)
    assert got["mean"] == pytest.approx(list(want["mean"]), abs=1e-8)
    assert got["std"] == pytest.approx(list(want["std"]), abs=1e-8)
    assert got["crop_pct"] == want["crop_pct"] and got["interpolation"] == want["interpolation"]
    assert want["crop_mode"] == "center"  # the crop vitkit does for crop_pct < 1


def test_timm_name_is_read_offline(monkeypatch):
    """A timm model name's config comes from timm's registry: no socket is ever opened."""
    pytest.importorskip("timm")

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    preset = get_preset("deit_tiny_patch16_224.fb_in1k")
    assert preset.for_channels(3) == get_preset("deit").for_channels(3)
    assert preset.source == "preset deit_tiny_patch16_224.fb_in1k (timm's pretrained config)"


def test_unknown_names_are_one_line_errors(monkeypatch):
    names = r"not a preset \(imagenet, deit, inception, clip, none, vitkit\) nor a timm"
    with pytest.raises(ValueError, match=names):
        get_preset("no_such_model_anywhere")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(ValueError, match="timm is not installed"):
        get_preset("deit_tiny_patch16_224")
    assert get_preset("DeiT").name == "deit"  # presets by name need no timm


@pytest.fixture
def tiny_folder(tmp_path):
    """A vitkit model folder whose config.json stores mean = std = 0.5, crop 1."""
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=3, mlp_size=96,
                    num_classes=5)
    model = randomize_(ViT(cfg).eval())
    data = dict(image_size=[32, 32], channels=3, mean=[0.5] * 3, std=[0.5] * 3, interpolation="bilinear",
                crop_pct=1.0)
    return save_pretrained(model, tmp_path / "tiny", {"data": data})


def test_precedence(tiny_folder):
    """--load.mean/std > --load.preprocess > stored > default; each source is named."""
    stored = open_model(tiny_folder)
    assert stored.spec_source == "stored in config.json" and stored.spec.interpolation == "bilinear"
    preset = open_model(tiny_folder, LoadOptions(preprocess="deit"))
    assert preset.spec.mean == IMAGENET_MEAN and preset.spec.std == IMAGENET_STD
    assert preset.spec.crop_pct == 0.9 and preset.spec.interpolation == "bicubic"
    assert preset.spec.image_size == (32, 32)  # the model's own size is kept
    assert preset.spec_source == "preset deit"
    assert any("preset deit replaces the input spec stored in config.json" in n for n in preset.report.notes)
    given = open_model(tiny_folder, LoadOptions(preprocess="deit", mean=[0.1, 0.2, 0.3], std=[1.0] * 3))
    assert given.spec.mean == [0.1, 0.2, 0.3] and given.spec.std == [1.0] * 3 and given.spec.crop_pct == 0.9
    assert given.spec_source == "--load.mean/--load.std; crop and interpolation: preset deit"
    for name in DEFAULT_NAMES:
        reset = open_model(tiny_folder, LoadOptions(preprocess=name))
        assert reset.spec.mean == [0.5] * 3 and reset.spec.crop_pct == 1.0
        assert reset.spec.interpolation == "bicubic"


def test_default_is_named(tmp_path, tiny_model):
    torch.save(tiny_model.state_dict(), tmp_path / "bare.pth")  # a bare state dict stores no spec
    opened = open_model(tmp_path / "bare.pth", LoadOptions(num_heads=3))
    assert opened.spec_source == "default: mean = std = 0.5 assumed"
    assert any("--load.preprocess" in n for n in opened.report.notes)


def test_preset_for_grayscale_model_is_refused(tmp_path):
    cfg = ViTConfig(image_size=16, patch_size=8, hidden_size=24, num_layers=1, num_heads=2, mlp_size=48,
                    num_classes=2, num_channels=1)
    folder = save_pretrained(ViT(cfg), tmp_path / "gray")
    with pytest.raises(ValueError, match="3 values; the model takes 1 channel"):
        open_model(folder, LoadOptions(preprocess="imagenet"))
    assert open_model(folder, LoadOptions(preprocess="none")).spec.mean == [0.5]


def test_convert_stores_preset_of_a_bare_file(tmp_path, tiny_model):
    torch.save(tiny_model.state_dict(), tmp_path / "bare.pth")
    main(["convert", str(tmp_path / "bare.pth"), str(tmp_path / "out"), "--load.num_heads", "3",
          "--load.preprocess", "clip"])
    data = json.loads((tmp_path / "out" / "config.json").read_text())["data"]
    assert data["mean"] == list(PRESETS["clip"]["mean"]) and data["crop_pct"] == 0.9
    assert open_model(tmp_path / "out").spec_source == "stored in config.json"


def test_info_without_and_with_a_model(capsys, tiny_folder):
    main(["info"])
    assert "| B/16 | 12 | 768 | 3072 | 12 | 86,567,656 | 86M |" in capsys.readouterr().out
    main(["info", str(tiny_folder), "--load.preprocess", "imagenet"])
    out = capsys.readouterr().out
    assert "2 layers, width 48, MLP 96, 3 heads, patch 8, image 32x32, 5 classes" in out
    assert "crop_pct 0.875, bicubic" in out and "input from: preset imagenet" in out
    main(["info", "--json", "true", str(tiny_folder)])
    (d,) = json.loads(capsys.readouterr().out)["models"]
    assert d["layers"] == 2 and d["params"] == ViT(ViTConfig(**json.loads(
        (tiny_folder / "config.json").read_text())["model"])).num_params()
    assert d["input"]["source"] == "stored in config.json" and d["input"]["interpolation"] == "bilinear"


def test_unknown_preset_on_the_command_line(capsys, tiny_folder):
    with pytest.raises(SystemExit) as e:
        main(["info", str(tiny_folder), "--load.preprocess", "bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkit: error: --load.preprocess bogus: not a preset") and "\n" not in err
    assert all(n in err for n in NAMES)


# On the real ImageNet DeiT-Tiny (../shared/models) and a real photo (../shared/datasets).


@pytest.fixture(scope="module")
def deit():
    if not DEIT.is_file() or not IMAGENET_CLASSES.is_file():
        pytest.skip("needs ../shared/models/deit-tiny-patch16-224-in1k.safetensors and its class names")
    return DEIT


@pytest.fixture(scope="module")
def bee(deit, tmp_path_factory):
    if not HYMENOPTERA.is_file():
        pytest.skip("needs ../shared/datasets/hymenoptera.tar.gz")
    out = tmp_path_factory.mktemp("bee") / "bee.jpg"
    with tarfile.open(HYMENOPTERA) as tar:
        out.write_bytes(tar.extractfile(BEE).read())
    return out


def vitkit_top5(capsys, photo, *extra) -> list[tuple[int, float]]:
    capsys.readouterr()
    classes = json.dumps(IMAGENET_CLASSES.read_text().splitlines())
    main(["predict", str(DEIT), str(photo), "--load.classes", classes, "--json", "true",
          "--precision", "fp32", "--engine", "torch", *extra])
    (r,) = json.loads(capsys.readouterr().out)
    return [(t["index"], t["probability"]) for t in r["top"]]


def test_deit_preset_predicts_as_timm(capsys, bee):
    timm = pytest.importorskip("timm")
    from PIL import Image
    from safetensors.torch import load_file

    m = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    m.load_state_dict(load_file(DEIT))
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=m.eval()))
    with torch.no_grad(), Image.open(bee) as im:
        p, i = m(transform(im.convert("RGB"))[None]).softmax(-1)[0].topk(5)
    want = list(zip(i.tolist(), p.tolist(), strict=True))
    got = vitkit_top5(capsys, bee, "--load.preprocess", "deit")
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[1] for g in got] == pytest.approx([w[1] for w in want], abs=1e-4)
    assert IMAGENET_CLASSES.read_text().splitlines()[got[0][0]] == "bee"
    plain = vitkit_top5(capsys, bee)  # vitkit's default: mean = std = 0.5, the whole image resized
    assert abs(plain[0][1] - want[0][1]) > 0.1
    print(f"DeiT-Tiny on {BEE}: bee {got[0][1]:.4f} with --load.preprocess deit, {plain[0][1]:.4f} without")


def test_deit_preset_is_stored_by_convert(capsys, deit, tmp_path):
    main(["convert", str(DEIT), str(tmp_path / "deit"), "--load.preprocess", "deit"])
    data = json.loads((tmp_path / "deit" / "config.json").read_text())["data"]
    assert data["mean"] == IMAGENET_MEAN and data["std"] == IMAGENET_STD
    assert data["crop_pct"] == 0.9 and data["interpolation"] == "bicubic"
    given = open_model(DEIT, LoadOptions(preprocess="deit")).spec
    reopened = open_model(tmp_path / "deit")
    assert reopened.spec == given and reopened.spec_source == "stored in config.json"
    capsys.readouterr()
    main(["info", str(DEIT), "--load.preprocess", "deit"])
    out = capsys.readouterr().out
    assert "Ti/16: 12 layers, width 192, MLP 768, 3 heads, patch 16, image 224x224, 1000 classes, " \
           "5,717,416 parameters" in out
    assert "input from: preset deit" in out and "crop_pct 0.9, bicubic" in out


def test_preset_applies_to_an_onnx_file(tmp_path, tiny_folder):
    pytest.importorskip("onnxruntime")
    main(["export", str(tiny_folder), str(tmp_path / "tiny.onnx"), "--verify", "false"])
    assert open_model(tmp_path / "tiny.onnx").spec_source == "stored in the ONNX file"
    opened = open_model(tmp_path / "tiny.onnx", LoadOptions(preprocess="inception"))
    assert opened.spec_source == "preset inception" and opened.spec.crop_pct == 0.9
    assert opened.spec.mean == [0.5] * 3 and opened.spec.image_size == (32, 32)
