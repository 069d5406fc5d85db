"""One way to open a model: `vitkit predict`, `evaluate` and `visualize` on every format vitkit
reads give the top-1 that the library which wrote the model gives on the same images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_loading import randomize_all_

import vitkit
from vitkit.checkpoint import save_pretrained
from vitkit.cli import main
from vitkit.config import ViTConfig
from vitkit.data.preprocess import prepare_image
from vitkit.formats.timm import timm_kwargs
from vitkit.formats.writer import write_model
from vitkit.model import ViT

timm = pytest.importorskip("timm")
timm_vit = pytest.importorskip("timm.models.vision_transformer")
transformers = pytest.importorskip("transformers")
tv_models = pytest.importorskip("torchvision.models")

CLASSES = ["apple", "bird", "cloud"]
CFG = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=3, mlp_size=96,
                num_classes=3)
NOT_RECORDED = ["--load.num_heads", "3", "--load.classes", json.dumps(CLASSES)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Real photographs (scikit-learn's two sample images), cut into 32x32 tiles: 3 classes x 3."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photos")
    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(3):
            img = photos[(c + i) % 2]
            y, x = rng.integers(0, img.shape[0] - 96), rng.integers(0, img.shape[1] - 96)
            tile = Image.fromarray(img[y:y + 96, x:x + 96]).resize((32, 32), Image.Resampling.BICUBIC)
            tile.save(root / name / f"{i}.jpg" if i % 2 else root / name / f"{i}.png")
    return root


def files_and_labels(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return files, [CLASSES.index(p.parent.name) for p in files]


def cli_top1(capsys, source, root, *extra):
    """Top-1 class index per file from `vitkit predict --json`, and top-1 accuracy from
    `vitkit evaluate` on the whole folder; `vitkit visualize` must run too."""
    capsys.readouterr()
    main(["predict", str(source), str(root), "--json", "true", "--precision", "fp32", *extra])
    out = json.loads(capsys.readouterr().out)
    predicted = {r["file"]: r["top"][0]["index"] for r in out}
    ev = root.parent / f"eval-{abs(hash(str(source)))}"
    main(["evaluate", str(source), "--data.dataset", "folder", "--data.path", str(root), "--out", str(ev),
          "--precision", "fp32", *extra])
    printed = capsys.readouterr().out
    summary = json.loads((ev / "eval.json").read_text())
    files, _ = files_and_labels(root)
    assert f"{len(files)} images" in printed and summary["images"] == len(files)
    main(["visualize", str(source), str(files[0]), "--out", str(ev / "fig"), "--max_images", "1",
          "--num_samples", "1", *extra])
    capsys.readouterr()
    assert (ev / "fig" / "report.html").is_file() and (ev / "fig" / "rollout.png").is_file()
    return [predicted[str(f)] for f in files], summary["top1"]


@torch.no_grad()
def their_top1(forward, root, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=(32, 32), prepare=None):
    """The source library's predictions on the same images, prepared by `prepare` (the
    library's own transform) or else as the model's files say (size, mean, std)."""
    from vitkit.data.preprocess import InputSpec

    spec = InputSpec(size, 3, list(mean), list(std))
    prepare = prepare or (lambda im: prepare_image(im, spec))
    files, labels = files_and_labels(root)
    x = torch.stack([prepare(Image.open(f).convert("RGB")) for f in files])
    pred = forward(x).argmax(1).tolist()
    return pred, float(np.mean(np.array(pred) == np.array(labels)))


def check(capsys, source, root, forward, *extra, **spec):
    got, acc = cli_top1(capsys, source, root, *extra)
    want, want_acc = their_top1(forward, root, **spec)
    assert got == want
    assert acc == pytest.approx(want_acc)


def test_vitkit_model_folder(tmp_path, folder, capsys):
    model = randomize_all_(ViT(CFG))
    save_pretrained(model, tmp_path / "m", {"classes": CLASSES})
    check(capsys, tmp_path / "m", folder, model)


def test_vitkit_run_folder(tmp_path, folder, capsys):
    from vitkit.data.augment import AugmentConfig
    from vitkit.data.pipeline import DataConfig
    from vitkit.training import ModelSpec, OptimConfig, RunConfig, TrainConfig, fit

    cfg = TrainConfig(data=DataConfig(dataset="folder", path=str(folder), val_split=0.34, workers=0),
                      model=ModelSpec(patch_size=8, hidden_size=48, num_layers=1, num_heads=3, mlp_size=96,
                                      stem="patch"),
                      optim=OptimConfig(lr=1e-2), augment=AugmentConfig(crop="none", flip=False),
                      run=RunConfig(epochs=2, batch_size=4, out=str(tmp_path / "run"), progress=False,
                                    precision="fp32"))
    result = fit(cfg)
    opened = vitkit.open_model(result.run_dir)
    assert opened.classes == CLASSES and "train" in opened.extra
    check(capsys, result.run_dir, folder, opened.model, mean=opened.spec.mean, std=opened.spec.std)


def hf_config():
    return transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                  intermediate_size=96, image_size=32, patch_size=8, num_labels=3,
                                  id2label=dict(enumerate(CLASSES)),
                                  label2id={c: i for i, c in enumerate(CLASSES)})


def test_hf_folder_from_transformers(tmp_path, folder, capsys):
    cfg = hf_config()
    theirs = randomize_all_(transformers.ViTForImageClassification(cfg))
    theirs.save_pretrained(tmp_path / "hf")
    check(capsys, tmp_path / "hf", folder, lambda x: theirs(pixel_values=x).logits)


def test_hf_folder_from_vitkit_convert(tmp_path, folder, capsys):
    save_pretrained(randomize_all_(ViT(CFG)), tmp_path / "m", {"classes": CLASSES})
    main(["convert", str(tmp_path / "m"), str(tmp_path / "hf"), "--to", "hf"])
    capsys.readouterr()
    theirs = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    check(capsys, tmp_path / "hf", folder, lambda x: theirs(pixel_values=x).logits)


def test_timm_file(tmp_path, folder, capsys):
    theirs = randomize_all_(timm_vit.VisionTransformer(**timm_kwargs(CFG)))
    torch.save(theirs.state_dict(), tmp_path / "vit.pth")
    check(capsys, tmp_path / "vit.pth", folder, theirs, *NOT_RECORDED)


def test_torchvision_file(tmp_path, folder, capsys):
    theirs = tv_models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=3,
                                         hidden_dim=48, mlp_dim=96, num_classes=3)
    theirs = randomize_all_(theirs)
    torch.save(theirs.state_dict(), tmp_path / "tv.pth")
    imagenet = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # what torchvision files imply
    check(capsys, tmp_path / "tv.pth", folder, theirs, *NOT_RECORDED, **imagenet)


def test_npz_file(tmp_path, folder, capsys):
    """An official-format .npz, read back by timm's own npz loader as the reference."""
    cfg = CFG.replace(gelu="tanh")
    write_model(randomize_all_(ViT(cfg)), tmp_path / "vit.npz", to="npz")
    theirs = timm_vit.VisionTransformer(**timm_kwargs(cfg)).eval()
    timm_vit._load_weights(theirs, str(tmp_path / "vit.npz"))
    check(capsys, tmp_path / "vit.npz", folder, theirs, "--load.classes", json.dumps(CLASSES))


def _hub_cache(cache, repo_id: str, files_from) -> None:
    """The local layout huggingface_hub keeps for a downloaded repository."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / "0123456789abcdef"
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_ids_from_the_local_cache(tmp_path, folder, capsys, hub_cache):
    cfg = hf_config()
    hf = randomize_all_(transformers.ViTForImageClassification(cfg))
    hf.save_pretrained(tmp_path / "hf")
    _hub_cache(hub_cache, "google/vit-small-test", tmp_path / "hf")
    check(capsys, "google/vit-small-test", folder, lambda x: hf(pixel_values=x).logits)

    # a timm repository: config.json with "architecture" and "pretrained_cfg" (mean, std)
    tm = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32)
    tm = randomize_all_(tm)
    from timm.models._hub import save_for_hf

    save_for_hf(tm, str(tmp_path / "timm"), safe_serialization=True)
    _hub_cache(hub_cache, "timm/vit_tiny_patch16_224.test", tmp_path / "timm")
    opened = vitkit.open_model("timm/vit_tiny_patch16_224.test")
    assert opened.model.config.num_heads == 3 and opened.spec.mean == list(tm.pretrained_cfg["mean"])
    # timm's own evaluation transform (resize to 32 / crop_pct 0.9, centre crop, normalize)
    config = timm.data.resolve_data_config({"input_size": (3, 32, 32)}, model=tm)
    transform = timm.data.create_transform(**config)
    check(capsys, "timm/vit_tiny_patch16_224.test", folder, tm, "--load.classes", json.dumps(CLASSES),
          prepare=transform)


def test_uncached_hub_id_says_how_to_download(capsys, hub_cache):
    with pytest.raises(SystemExit) as e:
        main(["predict", "google/vit-not-here", "x.png"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "hf download google/vit-not-here" in err and "cache" in err


def test_what_files_do_not_record_can_be_given(tmp_path):
    theirs = randomize_all_(timm_vit.VisionTransformer(**timm_kwargs(CFG)))
    torch.save(theirs.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match="cannot infer num_heads for width 48"):
        vitkit.open_model(tmp_path / "vit.pth")
    opened = vitkit.open_model(tmp_path / "vit.pth", vitkit.LoadOptions(num_heads=3, mean=[0.1] * 3,
                                                                         std=[0.2] * 3))
    assert opened.classes == ["0", "1", "2"] and opened.spec.mean == [0.1] * 3
    assert any("class names not recorded" in n for n in opened.report.notes)
    with pytest.raises(ValueError, match="2 class names given for a model with 3 outputs"):
        vitkit.open_model(tmp_path / "vit.pth", vitkit.LoadOptions(num_heads=3, classes=["a", "b"]))


def test_save_pretrained_beside_from_pretrained(tmp_path):
    model = randomize_all_(ViT(CFG))
    model.save_pretrained(tmp_path / "m", classes=CLASSES)
    back = ViT.from_pretrained(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    assert vitkit.open_model(tmp_path / "m").classes == CLASSES


def test_import_graph_has_no_cycle_and_data_does_not_import_the_model():
    """Every import inside vitkit, function-level ones included, read from the source."""
    import ast
    from pathlib import Path

    src = Path(vitkit.__file__).parent
    modules = {}
    for f in src.rglob("*.py"):
        parts = f.relative_to(src.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (f, f.name == "__init__.py")
    graph = {}
    for name, (f, is_pkg) in modules.items():
        package = name if is_pkg else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    deps.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("vitkit")}
        graph[name] = {d for d in deps if d in modules and d != name}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for d in graph[todo.pop()]:
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen

    # packages' __init__ re-export their children; a child importing a sibling is no cycle
    cycles = [m for m in graph if m in reach(m) and not modules[m][1]]
    assert not cycles, f"import cycles through {cycles}"
    for m in graph:
        if m.startswith("vitkit.data"):
            assert "vitkit.model" not in reach(m), f"{m} imports the model"
    assert "vitkit.loading" not in reach("vitkit.model")
