"""vitkit export: ONNX and .pt2 files give eager fp32's logits on real images, carry their
metadata, refuse files that are not theirs, and int8 files stay close."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from conftest import randomize_  # noqa: E402

from vitkit import ViT, ViTConfig  # noqa: E402
from vitkit.data.preprocess import InputSpec, prepare_image  # noqa: E402
from vitkit.export import export_model  # noqa: E402
from vitkit.export.runtime import open_onnx  # noqa: E402

CLASSES = ["cat", "dog", "ship", "tree", "sky"]
SPEC = InputSpec((32, 32), 3, [0.48, 0.46, 0.41], [0.23, 0.22, 0.22])
BATCHES = (1, 2, 7)


def real_images(folder: Path) -> list[Path]:
    """7 handwritten digits (sklearn's 8x8 scans, as PNG) and 7 crops of the two real photos
    sklearn ships (china, flower), resized to 32x32 and saved as JPEG."""
    from sklearn.datasets import load_digits, load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    digits = load_digits()
    for i in range(7):
        arr = (digits.images[i * 37] * (255 / 16)).astype(np.uint8)
        f = folder / f"digit{i}.png"
        Image.fromarray(arr, "L").resize((32, 32), Image.Resampling.BICUBIC).save(f)
        files.append(f)
    photos = load_sample_images().images
    for i in range(7):
        photo = photos[i % 2]
        top, left = 40 + 50 * i, 60 + 70 * i
        crop = Image.fromarray(photo[top:top + 96, left:left + 96]).resize((32, 32), Image.Resampling.BICUBIC)
        f = folder / f"photo{i}.jpg"
        crop.save(f, quality=90)
        files.append(f)
    return files


def prepared(files: list[Path], spec: InputSpec) -> torch.Tensor:
    out = []
    for f in files:
        with Image.open(f) as im:
            out.append(prepare_image(im, spec))
    return torch.stack(out)


def batches(x: torch.Tensor):
    """Batches of 1, 2 and 7 from the real images (digits and photos mixed)."""
    yield x[:1]
    yield x[6:8]
    yield x[4:11]


def eager(model: ViT, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    return real_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def model() -> ViT:
    """A small ViT trained for a second on digits 0-4, so that its predictions have real
    margins and int8 agreement means something."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=3, mlp_size=96,
                    num_classes=len(CLASSES))
    model = randomize_(ViT(cfg))
    digits = load_digits()
    keep = digits.target < len(CLASSES)
    x = torch.tensor(digits.images[keep] / 16, dtype=torch.float32)[:, None]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bicubic").clamp(0, 1).expand(-1, 3, -1, -1)
    x = (x - torch.tensor(SPEC.mean).view(3, 1, 1)) / torch.tensor(SPEC.std).view(3, 1, 1)
    y = torch.tensor(digits.target[keep])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(80):
        idx = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    # under bf16 autocast on purpose: the export must still trace the fp32 graph
    with torch.autocast("cpu", dtype=torch.bfloat16):
        path, notes = export_model(model, CLASSES, SPEC, out)
    return path


def test_onnx_matches_eager_fp32_on_real_images(model, onnx_file, files):
    x = prepared(files, SPEC)
    opened = open_onnx(onnx_file)
    for xb in batches(x):
        got = opened.model(xb)
        assert got.dtype == torch.float32 and got.shape == (len(xb), len(CLASSES))
        ref = eager(model, xb)
        full = model.forward_head(model.forward_features(xb)).detach()  # the reference path, no fast path
        assert (got - ref).abs().max().item() < 1e-4, len(xb)
        assert (got - full).abs().max().item() < 1e-4, len(xb)
    graph = onnx.load(str(onnx_file)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Resize", "Upsample", "GridSample"}  # no interpolation in the graph


def test_onnx_file_carries_what_prediction_needs(model, onnx_file, files):
    opened = open_onnx(onnx_file)
    assert opened.classes == CLASSES
    assert opened.spec == SPEC
    assert opened.model.config == model.config
    assert opened.source == str(onnx_file) and opened.name == "model"
    assert "onnx" in str(opened.report)
    m = opened.model.eval()
    assert isinstance(m, torch.nn.Module) and not list(m.parameters())
    probs = m.predict_proba(prepared(files[:3], opened.spec))
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)
    meta = json.loads(onnx.load(str(onnx_file)).metadata_props[0].value)
    assert meta["classes"] == CLASSES and meta["model"]["hidden_size"] == 48
    from vitkit import loading

    if hasattr(loading, "open_model"):  # .onnx paths open through the common entry point too
        again = loading.open_model(str(onnx_file))
        assert again.classes == CLASSES and again.spec == SPEC


def test_pt2_matches_eager_without_vitkit(model, files, tmp_path):
    out = tmp_path / "model.pt2"
    export_model(model, CLASSES, SPEC, out, format="pt2")
    x = prepared(files, SPEC)
    torch.save({"x": x, "ref": eager(model, x)}, tmp_path / "io.pt")
    script = f"""
import json, sys, torch
sys.modules["vitkit"] = None  # vitkit cannot be imported: the file must stand alone
extra = {{"vitkit.json": ""}}
program = torch.export.load({str(out)!r}, extra_files=extra)
io = torch.load({str(tmp_path / "io.pt")!r})
run = program.module()
diffs = [(run(x) - io["ref"][i:i + len(x)]).abs().max().item()
         for i, x in ((0, io["x"][:1]), (6, io["x"][6:8]), (4, io["x"][4:11]))]
print(json.dumps({{"diffs": diffs, "meta": json.loads(extra["vitkit.json"])}}))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert max(result["diffs"]) < 1e-4
    assert result["meta"]["classes"] == CLASSES
    assert InputSpec.from_dict(result["meta"]["input"]) == SPEC
    assert ViTConfig.from_dict(result["meta"]["model"]) == model.config


def test_hybrid_model_exports_at_a_new_image_size(files, tmp_path):
    torch.manual_seed(1)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64,
                    num_classes=len(CLASSES), stem="conv", stem_channels=32, stem_stride=2)
    hybrid = randomize_(ViT(cfg)).eval()
    path, notes = export_model(hybrid, CLASSES, SPEC, tmp_path / "hybrid.onnx", image_size=48)
    assert any("resampled 4x4 -> 6x6" in n for n in notes)
    opened = open_onnx(path)
    assert opened.spec.image_size == (48, 48) and opened.model.config.image_size == (48, 48)
    x = prepared(files, opened.spec)  # the real images prepared at the export size
    for xb in batches(x):
        # eager interpolates the position embeddings on the fly with the same resampling
        assert (opened.model(xb) - eager(hybrid, xb)).abs().max().item() < 1e-4
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Conv" in ops and not ops & {"Resize", "Upsample"}
    with pytest.raises(ValueError, match="image size is fixed"):
        opened.model(torch.zeros(1, 3, 32, 32))


def test_timm_checkpoint_exports(files, tmp_path):
    timm = pytest.importorskip("timm")
    import vitkit

    torch.manual_seed(2)
    theirs = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0, num_classes=4)
    randomize_(theirs).eval()
    torch.save(theirs.state_dict(), tmp_path / "timm_vit.pth")
    ours = vitkit.load(tmp_path / "timm_vit.pth", num_heads=3)
    spec = InputSpec((32, 32), 3, [0.5] * 3, [0.5] * 3)
    path, _ = export_model(ours, list("abcd"), spec, tmp_path / "timm.onnx")
    opened = open_onnx(path)
    x = prepared(files, spec)
    for xb in batches(x):
        assert (opened.model(xb) - eager(theirs, xb)).abs().max().item() < 1e-4


def tiny_onnx_without_metadata(path: Path) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def test_files_that_are_not_vitkit_exports_get_one_line_errors(onnx_file, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])
    text = tmp_path / "notes.onnx"
    text.write_text("these are not the weights you are looking for\n")
    foreign = tiny_onnx_without_metadata(tmp_path / "relu.onnx")
    for path, why in ((corrupt, "not a readable ONNX model"), (text, "not a readable ONNX model"),
                      (foreign, "without vitkit metadata")):
        with pytest.raises(ValueError) as err:
            open_onnx(path)
        msg = str(err.value)
        assert msg.startswith(str(path)) and why in msg and "\n" not in msg
    with pytest.raises(FileNotFoundError):
        open_onnx(tmp_path / "missing.onnx")


def test_int8_export_from_the_command_line(model, onnx_file, files, tmp_path, capsys):
    from vitkit.checkpoint import save_pretrained
    from vitkit.cli import main

    save_pretrained(model, tmp_path / "run", {"classes": CLASSES, "data": SPEC.to_dict()})
    out = tmp_path / "int8.onnx"
    main(["export", str(tmp_path / "run"), str(out), "--int8", "true", "--calibration", str(files[0].parent)])
    printed = capsys.readouterr().out
    assert "wrote" in printed and "top-1 agreement" in printed
    assert out.stat().st_size < 0.6 * onnx_file.stat().st_size
    opened = open_onnx(out)
    assert opened.classes == CLASSES and opened.model.int8
    x = prepared(files, SPEC)
    agree = (opened.model(x).argmax(-1) == eager(model, x).argmax(-1)).float().mean().item()
    assert agree >= 12 / 14


def _encoder(tmp_path: Path, registers: int, num_classes: int, class_token: bool = True) -> Path:
    """A small random ViT (with registers: tokens between the class token and the patches)
    saved as a model folder with SPEC."""
    from vitkit.checkpoint import save_pretrained

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_layers=3, num_heads=3, mlp_size=96,
                    num_classes=num_classes, register_tokens=registers, class_token=class_token,
                    pool="cls" if class_token else "mean")
    model = randomize_(ViT(cfg), seed=registers).eval()
    return save_pretrained(model, tmp_path / f"enc{registers}",
                           {"classes": CLASSES[:num_classes], "data": SPEC.to_dict()})


@pytest.mark.parametrize("registers, options", [
    (2, {"layer": 1, "token": "cls", "norm": False}),  # a middle block, registers skipped
    (0, {"layer": -1, "token": "mean", "norm": True}),
])
def test_features_export_equals_feature_model(files, tmp_path, registers, options):
    from vitkit.export import export_file
    from vitkit.features import FeatureModel, FeatureOptions
    from vitkit.loading import open_model

    folder = _encoder(tmp_path, registers, num_classes=len(CLASSES))
    opts = FeatureOptions(**options, precision="fp32")
    done = export_file(folder, tmp_path / "features.onnx", features=opts)
    assert done.check.features_max_abs_diff < 1e-4 and done.check.tokens_max_abs_diff < 1e-4
    ran = open_onnx(done.path, features=True)
    assert ran.model.meta["features"] == {"layer": options["layer"] % 3, "token": options["token"],
                                          "norm": options["norm"]}
    assert [o.name for o in ran.model.session.get_outputs()] == ["features", "tokens"]
    opened = open_model(folder)
    fm = FeatureModel(opened, opts)
    x = prepared(files, SPEC)
    for xb in batches(x):
        feats, tokens = ran.model(xb)
        assert feats.shape == (len(xb), 48) and tokens.shape == (len(xb), 48, 4, 4)
        assert (feats - fm(xb)).abs().max().item() < 1e-4, len(xb)
        with torch.no_grad():
            grid = opened.model.forward_intermediates(xb, layers=[options["layer"]], output="grid",
                                                      norm=options["norm"]).patches[0]
        assert (tokens - grid).abs().max().item() < 1e-4, len(xb)


def test_features_export_from_the_command_line_is_refused_by_predict(onnx_file, files, tmp_path, capsys):
    from vitkit.cli import main
    from vitkit.loading import open_model

    folder = _encoder(tmp_path, registers=1, num_classes=0)  # a pre-trained encoder: no head
    with pytest.raises(SystemExit):
        main(["export", str(folder), str(tmp_path / "logits.onnx")])
    assert "--features true" in capsys.readouterr().err
    out = tmp_path / "int8-features.onnx"
    main(["export", str(folder), str(out), "--features", "true", "--features.token", "mean", "--int8", "true",
          "--calibration", str(files[0].parent)])
    printed = capsys.readouterr().out
    assert "features export: the mean token of block 2" in printed and "(tokens)" in printed
    ran = open_onnx(out, features=True)
    assert ran.model.int8 and ran.model.meta["features"] == {"layer": 2, "token": "mean", "norm": True}
    feats, _ = ran.model(prepared(files, SPEC))
    ref = open_model(folder).model.forward_intermediates(prepared(files, SPEC), layers=[2], norm=True)
    cos = torch.nn.functional.cosine_similarity(feats, ref.patches[0].mean(1).detach(), dim=1)
    assert cos.min().item() > 0.98
    for args in (["predict", str(out), str(files[0])], ["evaluate", str(out)]):
        with pytest.raises(SystemExit) as code:
            main(args)
        err = capsys.readouterr().err.strip()
        assert code.value.code == 2 and "\n" not in err
        assert err.startswith(f"vitkit: error: {out}: a features export (no classifier head)")
    with pytest.raises(ValueError, match="features export"):  # what serve opens through
        open_model(out)
    with pytest.raises(ValueError, match="a classifier export, not a features export"):
        open_onnx(onnx_file, features=True)


def test_features_export_options_are_checked(tmp_path):
    from vitkit.export import export_file
    from vitkit.features import FeatureOptions

    folder = _encoder(tmp_path, registers=2, num_classes=0, class_token=False)
    for opts, why in ((FeatureOptions(token="cls"), "has no class token"),  # registers are not one
                      (FeatureOptions(layer=3), "the model has 3 blocks")):
        with pytest.raises(ValueError, match=why):
            export_file(folder, tmp_path / "f.onnx", features=opts, verify=False)
    with pytest.raises(ValueError, match="a features export is an ONNX file"):
        export_file(folder, tmp_path / "f.pt2", format="pt2", features=True, verify=False)
    assert not (tmp_path / "f.onnx").exists()


@pytest.fixture(scope="module")
def dynamic_onnx(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("dynamic") / "dynamic.onnx"
    return export_model(model, CLASSES, SPEC, out, dynamic_size=True)[0]


def test_dynamic_size_onnx_matches_eager_at_any_size(model, dynamic_onnx):
    opened = open_onnx(dynamic_onnx)
    assert opened.model.meta["dynamic_size"] is True and opened.model.meta["patch_size"] == 8
    assert opened.spec.image_size == (32, 32)  # the default size predict prepares images at
    dims = onnx.load(str(dynamic_onnx)).graph.input[0].type.tensor_type.shape.dim
    assert all(dims[i].dim_param for i in (0, 2, 3))  # batch, height and width symbolic
    g = torch.Generator().manual_seed(3)
    for hw in [(32, 32), (32, 48), (48, 24), (16, 40)]:
        x = torch.randn(2, 3, *hw, generator=g)
        got = opened.model(x)
        assert got.shape == (2, len(CLASSES))
        assert (got - eager(model, x)).abs().max().item() < 1e-4, hw


def test_dynamic_size_onnx_refuses_sizes_the_patch_does_not_divide(model, dynamic_onnx):
    x = torch.zeros(1, 3, 30, 32)
    with pytest.raises(ValueError, match="image size 30x32 is not a multiple of patch size 8"):
        model(x)  # the eager model's message ...
    with pytest.raises(ValueError) as err:
        open_onnx(dynamic_onnx).model(x)  # ... is the file's, before onnxruntime sees the input
    assert str(err.value) == "dynamic.onnx: image size 30x32 is not a multiple of patch size 8"
    with pytest.raises(ValueError, match="dynamic image size is for ONNX"):
        export_model(model, CLASSES, SPEC, dynamic_onnx.with_suffix(".pt2"), format="pt2", dynamic_size=True)


def test_dynamic_size_onnx_predicts_at_the_model_size(model, dynamic_onnx, files, capsys):
    from vitkit.cli import main

    main(["predict", str(dynamic_onnx), str(files[0]), "--json", "true"])
    ref = eager(model, prepared(files[:1], SPEC)).softmax(-1)[0]
    printed = capsys.readouterr().out
    assert CLASSES[int(ref.argmax())] in printed


def test_dynamic_size_features_export_from_the_command_line(files, tmp_path, capsys):
    from vitkit.cli import main
    from vitkit.loading import open_model

    folder = _encoder(tmp_path, registers=1, num_classes=0)
    out = tmp_path / "features-dynamic.onnx"
    main(["export", str(folder), str(out), "--features", "true", "--dynamic_size", "true"])
    printed = capsys.readouterr().out
    assert "dynamic image size" in printed and "dynamic size)" in printed
    ran = open_onnx(out, features=True).model
    vit = open_model(folder).model
    g = torch.Generator().manual_seed(4)
    for hw in [(32, 32), (40, 24)]:
        x = torch.randn(2, 3, *hw, generator=g)
        feats, tokens = ran(x)
        with torch.no_grad():
            ref = vit.forward_intermediates(x, layers=[2], output="grid", norm=True)
        assert tokens.shape == (2, 48, hw[0] // 8, hw[1] // 8)
        assert (feats - ref.prefix[0][:, 0]).abs().max().item() < 1e-4, hw
        assert (tokens - ref.patches[0]).abs().max().item() < 1e-4, hw
