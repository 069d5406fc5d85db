"""`vitkit convert SRC OUT --to FORMAT`: every output is read back by its own library."""

import json

import numpy as np
import pytest
import torch
from helpers import tiny_train_config
from PIL import Image
from safetensors.torch import load_file
from test_loading import assert_same, images, randomize_all_

import vitkit
from vitkit.checkpoint import read_meta, save_pretrained
from vitkit.cli import main
from vitkit.config import ViTConfig
from vitkit.data.preprocess import prepare_image
from vitkit.formats.timm import timm_kwargs
from vitkit.formats.writer import write_model
from vitkit.loading import open_model
from vitkit.model import ViT
from vitkit.notices import VitkitWarning
from vitkit.training import fit

timm = pytest.importorskip("timm")
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
    (tmp_path / "taken").write_text("a file")
    for to in ("timm", "hf"):
        with pytest.raises(SystemExit) as e:
            main(["convert", str(path), str(tmp_path / "taken"), "--to", to])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"vitkit: error: {tmp_path / 'taken'}: exists and is not a folder")
        assert "\n" not in err


# ---- folders the other libraries open through their own front doors -------------------------
DATA = dict(mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], interpolation="bicubic", crop_pct=1.0)


@pytest.fixture
def src_data(tmp_path):
    """A model stored with its own normalization, resize rule and class names."""
    model = randomize_all_(ViT(CFG))
    save_pretrained(model, tmp_path / "src", extra={"classes": [f"c{i}" for i in range(6)], "data": DATA})
    return model, tmp_path / "src"


def photo_files(directory, sizes=((60, 70), (48, 48), (100, 40), (33, 90)), gray=False):
    """Smooth random pictures of several sizes, as JPEG and PNG."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (w, h) in enumerate(sizes):
        small = (rng.random((max(h // 4, 2), max(w // 4, 2), 3)) * 255).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
        if gray and i % 2:
            img = img.convert("L")
        f = directory / f"p{i}.{'png' if i % 2 else 'jpg'}"
        img.save(f)
        files.append(f)
    return files


def vitkit_top1(capsys, weights, files) -> list[str]:
    res = json.loads(run(capsys, "predict", weights, *files, "--json", "true", "--precision", "fp32",
                         "--topk", "1"))
    return [r["top"][0]["class"] for r in res]


@torch.no_grad()
def vitkit_logits(weights, files) -> torch.Tensor:
    opened = open_model(weights)
    batch = [prepare_image(Image.open(f), opened.spec) for f in files]
    return opened.model(torch.stack(batch))


@torch.no_grad()
def hf_logits(folder, files, **kw) -> torch.Tensor:
    proc = transformers.AutoImageProcessor.from_pretrained(folder, **kw)
    model = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
    return model(**proc([Image.open(f) for f in files], return_tensors="pt")).logits


def pil_backend() -> dict:
    """transformers' PIL image processor (resizes as vitkit does) where it has a choice."""
    return {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}


def pipeline_top1(folder, files) -> list[str]:
    classify = transformers.pipeline("image-classification", model=str(folder))
    return [r[0]["label"] for r in classify([str(f) for f in files], top_k=1)]


def test_convert_to_hf_opens_in_pipeline_and_auto_classes(tmp_path, capsys, src_data):
    _, path = src_data
    run(capsys, "convert", path, tmp_path / "hf", "--to", "hf")
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 48, "width": 48} and pre["resample"] == 3  # PIL bicubic
    assert pre["image_mean"] == DATA["mean"] and pre["image_std"] == DATA["std"]
    files = photo_files(tmp_path / "photos")
    ours = vitkit_top1(capsys, path, files)
    assert pipeline_top1(tmp_path / "hf", files) == ours
    want = vitkit_logits(path, files)
    assert [f"c{i}" for i in want.argmax(1).tolist()] == ours
    assert (hf_logits(tmp_path / "hf", files, **pil_backend()) - want).abs().max() < 1e-4
    assert (hf_logits(tmp_path / "hf", files) - want).abs().max() < 1e-2  # torchvision's resize
    back = open_model(tmp_path / "hf")  # and vitkit reads the folder back as it was
    assert back.spec == open_model(path).spec and back.classes == [f"c{i}" for i in range(6)]
    assert (vitkit_logits(tmp_path / "hf", files) - want).abs().max() < 1e-5


def test_convert_to_hf_center_crop(tmp_path, capsys):
    model = randomize_all_(ViT(CFG))
    save_pretrained(model, tmp_path / "src", extra={"data": {**DATA, "crop_pct": 0.75}})
    run(capsys, "convert", tmp_path / "src", tmp_path / "hf", "--to", "hf")
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 64} and pre["crop_size"] == {"height": 48, "width": 48}
    files = photo_files(tmp_path / "photos")
    want = vitkit_logits(tmp_path / "src", files)
    assert (hf_logits(tmp_path / "hf", files, **pil_backend()) - want).abs().max() < 1e-4
    assert open_model(tmp_path / "hf").spec.crop_pct == 0.75


@torch.no_grad()
def test_convert_to_timm_folder_opens_with_create_model(tmp_path, capsys, src_data):
    model, path = src_data
    out = run(capsys, "convert", path, tmp_path / "timm", "--to", "timm")
    assert f"wrote {tmp_path / 'timm'} (timm)" in out
    theirs = timm.create_model("local-dir:" + str(tmp_path / "timm"), pretrained=True).eval()
    cfg = theirs.pretrained_cfg
    assert cfg["mean"] == DATA["mean"] and cfg["std"] == DATA["std"] and cfg["interpolation"] == "bicubic"
    assert tuple(cfg["input_size"]) == (3, 48, 48) and cfg["label_names"] == [f"c{i}" for i in range(6)]
    x = images(48)
    assert (theirs(x) - model(x)).abs().max() < 1e-4
    timm_cfg = timm.data.resolve_data_config(model=theirs)
    assert timm_cfg["crop_pct"] == 1.0 and tuple(timm_cfg["input_size"]) == (3, 48, 48)
    back = open_model(tmp_path / "timm")
    assert back.spec == open_model(path).spec and back.classes == [f"c{i}" for i in range(6)]
    assert_same(back.model(x), model(x))


@torch.no_grad()
def test_convert_mean_pool_tanh_model_to_timm_folder(tmp_path, capsys):
    cfg = CFG.replace(pool="mean", gelu="tanh", num_heads=2, pos_embed="sincos2d")
    model = randomize_all_(ViT(cfg))
    save_pretrained(model, tmp_path / "src")
    run(capsys, "convert", tmp_path / "src", tmp_path / "timm", "--to", "timm")
    theirs = timm.create_model("local-dir:" + str(tmp_path / "timm"), pretrained=True).eval()
    x = images(48)
    assert (theirs(x) - model(x)).abs().max() < 1e-4
    back = open_model(tmp_path / "timm").model
    assert back.config.num_heads == 2 and back.config.gelu == "tanh" and back.config.pool == "mean"
    assert_same(back(x), model(x))


def test_grayscale_run_to_hf_and_timm(tmp_path, capsys):
    r = fit(tiny_train_config(tmp_path / "run", epochs=1, data={"per_class": 10}))
    files = photo_files(tmp_path / "photos", sizes=((8, 8), (20, 24), (31, 17), (8, 8)), gray=True)
    capsys.readouterr()
    main(["convert", str(r.run_dir), str(tmp_path / "hf"), "--to", "hf"])
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("vitkit: warning:")]
    assert len(warned) == 1 and "converts images to RGB" in warned[0] and "luma" in warned[0]
    with pytest.warns(VitkitWarning, match="converts images to RGB"):  # the library says it the same way
        write_model(open_model(r.run_dir).model, tmp_path / "hf2", to="hf")
    pre = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    mean = read_meta(r.run_dir)["data"]["mean"]
    assert pre["image_mean"] == mean * 3 and pre["size"] == {"height": 8, "width": 8}
    ours = vitkit_top1(capsys, r.run_dir, files)
    assert pipeline_top1(tmp_path / "hf", files) == ours
    want = vitkit_logits(r.run_dir, files)
    # vitkit rounds the luma to 8 bits before resizing; transformers weighs the channels after
    assert (hf_logits(tmp_path / "hf", files, **pil_backend()) - want).abs().max() < 5e-3
    assert vitkit_top1(capsys, tmp_path / "hf", files) == ours
    run(capsys, "convert", r.run_dir, tmp_path / "timm", "--to", "timm")
    theirs = timm.create_model("local-dir:" + str(tmp_path / "timm"), pretrained=True).eval()
    batch = torch.stack([prepare_image(Image.open(f), open_model(r.run_dir).spec) for f in files])
    with torch.no_grad():
        assert theirs.pretrained_cfg["input_size"][0] == 1
        assert (theirs(batch) - want).abs().max() < 1e-4
    assert vitkit_top1(capsys, tmp_path / "timm", files) == ours
