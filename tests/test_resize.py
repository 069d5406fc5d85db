"""How photos of another shape meet the model (--data.resize squash | crop | keep): the size
rule, decoding, batches of one size, and the mode kept with the model through evaluate,
predict, serve and export."""

import numpy as np
import pytest
import torch
from helpers import tiny_train_config
from PIL import Image

from vitkit.data.arrays import ImageArrays, iterate_eval, on_canvas
from vitkit.data.augment import AugmentConfig
from vitkit.data.pipeline import DataConfig, array_batches, epoch_steps
from vitkit.data.preprocess import MAX_ASPECT, InputSpec, image_to_uint8, keep_size
from vitkit.plan import load_data

SHAPES = [(40, 60), (60, 40), (48, 48), (30, 64)]  # (h, w): landscape, portrait, square, wide


def test_keep_size_keeps_the_aspect_within_the_patch_budget():
    assert keep_size((300, 300), (64, 64), 8) == (64, 64)
    assert keep_size((375, 500), (64, 64), 8) == (56, 72)  # 4:3 landscape: 7x9 patches
    assert keep_size((500, 375), (64, 64), 8) == (72, 56)
    for own in [(375, 500), (130, 193), (1944, 2592), (100, 1000), (1000, 100), (1, 1)]:
        h, w = keep_size(own, (224, 224), 16)
        assert h % 16 == 0 and w % 16 == 0 and (h // 16) * (w // 16) <= 196
        assert 1 / MAX_ASPECT - 0.1 <= h / w <= MAX_ASPECT + 0.1
    assert keep_size((100, 1000), (64, 64), 8) == keep_size((100, 200), (64, 64), 8)  # clamped to 2:1


def _bands(h: int, w: int) -> Image.Image:
    """Red left quarter, blue right quarter, green between."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 4, 0] = 255
    a[:, w // 4: w - w // 4, 1] = 255
    a[:, w - w // 4:, 2] = 255
    return Image.fromarray(a)


def test_squash_crop_and_keep_decode_as_named():
    img = _bands(60, 120)
    squash = image_to_uint8(img, 3, (32, 32))
    crop = image_to_uint8(img, 3, (32, 32), resize="crop")
    keep = image_to_uint8(img, 3, (32, 32), resize="keep", patch=8)
    assert squash.shape == crop.shape == (3, 32, 32)
    assert squash[0, :, 0].float().mean() > 200  # the whole image: the red band is there
    assert crop[0, :, 0].float().mean() < 50 and crop[2, :, -1].float().mean() < 50  # the sides cut off
    assert keep.shape == (3, 16, 40) or keep.shape == (3, 24, 40)  # about 2:1, at most 16 patches
    assert keep.shape[1] * keep.shape[2] // 64 <= 16
    spec = InputSpec((32, 32), 3, resize="keep", patch=8)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="resize 'fit'"):
        InputSpec((32, 32), 3, resize="fit")


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Two classes of photos in four shapes (class 0 dark, class 1 bright), train and val."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c, name in enumerate(["dark", "bright"]):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                h, w = SHAPES[i % len(SHAPES)]
                a = rng.integers(0, 100, (h, w, 3)) + 140 * c
                Image.fromarray(a.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def _keep_config(root, out, epochs=2, **run):
    cfg = tiny_train_config(out, epochs=epochs, run=dict(batch_size=8, **run),
                            model=dict(patch_size=8, stem="patch"))
    cfg.data = DataConfig(dataset="folder", path=str(root / "train"), val_path=str(root / "val"),
                          image_size=32, resize="keep", cache_dir=str(out.parent / "cache"), workers=0)
    return cfg


def test_keep_batches_one_size_at_a_time_and_every_image_once(mixed_folder, tmp_path):
    cfg = _keep_config(mixed_folder, tmp_path / "run")
    data = load_data(cfg.data, AugmentConfig(), cfg.model)
    train = data.train
    assert data.spec.resize == "keep" and data.spec.patch == 8 and train.sizes is not None
    sizes = {tuple(s) for s in train.sizes.tolist()}
    assert len(sizes) >= 3 and all(h * w // 64 <= 16 for h, w in sizes)
    batches = list(array_batches(train, 8, epoch=1, seed=0))
    assert len(batches) == epoch_steps(train, 8)
    seen = []
    for x, y in batches:
        assert (x.shape[-2], x.shape[-1]) in sizes and len(x) <= 8
        seen.append(len(y))
    assert sum(seen) == len(train)  # no size goes untrained
    again = list(array_batches(train, 8, epoch=1, seed=0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))  # resumable: same order
    # evaluation reads each image at its own size, and its pixels only (no canvas)
    assert sum(len(y) for _, y in iterate_eval(data.val, 5)) == len(data.val)


def test_canvas_holds_each_image_top_left():
    a, b = torch.ones(3, 8, 16, dtype=torch.uint8), 2 * torch.ones(3, 16, 8, dtype=torch.uint8)
    canvas, sizes = on_canvas([a, b])
    assert canvas.shape == (2, 3, 16, 16) and sizes.tolist() == [[8, 16], [16, 8]]
    arrays = ImageArrays(canvas, torch.tensor([0, 1]), ["a", "b"], sizes)
    groups = dict(arrays.groups())
    assert torch.equal(arrays.batch(groups[(8, 16)], (8, 16))[0][0], a)
    assert arrays.subset([1]).sizes.tolist() == [[16, 8]]


def test_a_mixed_batch_gives_the_loss_of_its_images_one_by_one():
    from vitkit import ViT, ViTConfig
    from vitkit.inference import by_size

    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2,
                          mlp_size=64, num_classes=3)).eval()
    items = [torch.randn(3, h, w) for h, w in [(24, 40), (40, 24), (32, 32), (24, 40), (40, 24)]]
    y = torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        logits = torch.stack(by_size(lambda idx: list(model(torch.stack([items[i] for i in idx]))), items))
        one_by_one = torch.cat([model(t[None]) for t in items])
    assert torch.allclose(logits, one_by_one, atol=1e-5)
    ce = torch.nn.functional.cross_entropy
    batch_loss = ce(logits, y)
    single = torch.stack([ce(one_by_one[i:i + 1], y[i:i + 1]) for i in range(5)])
    assert abs(batch_loss.item() - single.mean().item()) < 1e-5


def test_a_keep_run_evaluates_predicts_serves_and_exports_as_it_trained(mixed_folder, tmp_path):
    from vitkit.evaluation import evaluate_path
    from vitkit.loading import open_model
    from vitkit.predict import predict_files
    from vitkit.training import fit

    cfg = _keep_config(mixed_folder, tmp_path / "run")
    result = fit(cfg)
    opened = open_model(tmp_path / "run")
    assert opened.spec.resize == "keep" and opened.spec.patch == 8
    # the accuracy training printed is the one evaluate reports (the same images, sizes, model)
    done = evaluate_path(tmp_path / "run", DataConfig(dataset="folder", path=str(mixed_folder / "val"),
                                                      cache_dir=str(tmp_path / "cache")), engine="torch")
    assert done.result.top1 == pytest.approx(result.val_acc)
    files = sorted((mixed_folder / "val").rglob("*.png"))
    got = predict_files(opened, files, topk=2, batch_size=3, engine="torch", precision="fp32")
    model = opened.model.eval()
    from vitkit.data.preprocess import open_image, prepare_image

    for f, r in zip(files, got, strict=True):
        with open_image(f) as im:
            x = prepare_image(im, opened.spec)
        assert x.shape[-2:] == keep_size((im.size[1], im.size[0]), (32, 32), 8)
        with torch.no_grad():
            p = model(x[None]).softmax(-1)[0]
        assert r["top"][0]["probability"] == pytest.approx(p.max().item(), abs=1e-5)
    # serve: one request batch of mixed sizes answers as the images one by one
    from vitkit.serve.inference import Engine

    engine = Engine(opened, "fp32", engine="torch")
    with open_image(files[0]) as a, open_image(files[1]) as b:
        items = [engine.prepare(a), engine.prepare(b)]
    assert items[0].tensor.shape != items[1].tensor.shape
    probs = engine.run_batch("predict", items)
    for it, p in zip(items, probs, strict=True):
        with torch.no_grad():
            assert torch.allclose(p, model(it.tensor[None]).softmax(-1)[0], atol=1e-5)
    # export: the file takes any size, as the images come
    pytest.importorskip("onnxruntime")
    from vitkit.export import export_model
    from vitkit.formats.exported import open_onnx

    out, notes = export_model(model, opened.classes, opened.spec, tmp_path / "keep.onnx")
    assert any("any image size" in n for n in notes)
    onnx = open_onnx(out).model
    for it in items:
        with torch.no_grad():
            assert torch.allclose(onnx(it.tensor[None]), model(it.tensor[None]), atol=1e-4)


def test_figures_of_a_keep_model_are_drawn_at_each_photos_aspect(mixed_folder, tmp_path):
    from vitkit.data.preprocess import open_image
    from vitkit.training import fit
    from vitkit.visualize.run import load_images, visualize_path

    fit(_keep_config(mixed_folder, tmp_path / "run", epochs=1))
    files = [next((mixed_folder / "val" / "dark").glob(f"{i}.png")) for i in range(3)]
    from vitkit.loading import open_model

    spec = open_model(tmp_path / "run").spec
    raw = load_images(files, spec).raw
    assert isinstance(raw, list)
    for f, r in zip(files, raw, strict=True):
        with open_image(f) as im:
            assert tuple(r.shape[-2:]) == keep_size((im.size[1], im.size[0]), (32, 32), 8)
    result = visualize_path(tmp_path / "run", tmp_path / "figures", images=[str(f) for f in files])
    names = {p.name for p in result.figures}
    assert {"attention_1.png", "attention_3.png", "rollout.png", "attention_distance.png"} <= names


def test_keep_refuses_to_stream(mixed_folder, tmp_path):
    cfg = _keep_config(mixed_folder, tmp_path / "run")
    cfg.data.cache = "never"
    with pytest.raises(ValueError, match="--data.resize keep: .* streamed"):
        load_data(cfg.data, AugmentConfig(), cfg.model)


def _finetuned(mixed_folder, tmp_path, image_size=(32, 48), mode="linear", **data):
    from vitkit import ViT, ViTConfig
    from vitkit.finetune import finetune
    from vitkit.training import RunConfig

    torch.manual_seed(0)
    source = ViT(ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, num_layers=1, num_heads=2,
                           mlp_size=64, num_classes=5))
    source.save_pretrained(tmp_path / "source", classes=list("abcde"))
    cfg = DataConfig(dataset="folder", path=str(mixed_folder / "train"), val_path=str(mixed_folder / "val"),
                     cache_dir=str(tmp_path / "cache"), workers=0, **data)
    return finetune(tmp_path / "source", cfg, run=RunConfig(out=str(tmp_path / "run"), progress=False,
                                                            precision="fp32", epochs=2), mode=mode)


@pytest.mark.parametrize("mode", ["linear", "full"])
def test_finetuning_with_keep_evaluates_as_it_trained(mixed_folder, tmp_path, mode):
    from vitkit.evaluation import evaluate_path

    result = _finetuned(mixed_folder, tmp_path, (32, 32), mode, resize="keep")  # trained in fp32
    done = evaluate_path(tmp_path / "run", DataConfig(dataset="folder", path=str(mixed_folder / "val"),
                                                      cache_dir=str(tmp_path / "cache")), engine="torch",
                         precision="fp32")
    assert done.result.top1 == pytest.approx(result.val_acc)
    assert done.result.loss == pytest.approx(result.metrics[-1]["val_loss"], rel=1e-4)


def test_a_non_square_source_stays_non_square_through_finetune_export_and_serve(mixed_folder, tmp_path):
    from vitkit.data.preprocess import open_image
    from vitkit.loading import open_model
    from vitkit.serve.inference import Engine

    _finetuned(mixed_folder, tmp_path)
    opened = open_model(tmp_path / "run")
    assert opened.model.config.image_hw == (32, 48) and tuple(opened.spec.image_size) == (32, 48)
    with open_image(next((mixed_folder / "val").rglob("*.png"))) as im:
        assert Engine(opened, engine="torch").prepare(im).tensor.shape == (3, 32, 48)
    pytest.importorskip("onnxruntime")
    from vitkit.export import export_model
    from vitkit.formats.exported import open_onnx

    out, _ = export_model(opened.model, opened.classes, opened.spec, tmp_path / "m.onnx")
    onnx = open_onnx(out)
    assert onnx.model.config.image_hw == (32, 48) and tuple(onnx.spec.image_size) == (32, 48)


@pytest.mark.parametrize("objective", ["mae", "mpp"])
def test_pretraining_and_the_probe_take_images_of_sizes_of_their_own(mixed_folder, tmp_path, objective):
    from vitkit.pretrain import PretrainConfig, pretrain
    from vitkit.probe import probe_path

    cfg = _keep_config(mixed_folder, tmp_path / "run")
    result = pretrain(cfg, PretrainConfig(objective=objective))
    assert np.isfinite(result.metrics[-1]["train_loss"])
    probe = probe_path(tmp_path / "run", DataConfig(dataset="folder", path=str(mixed_folder / "train"),
                                                     val_path=str(mixed_folder / "val"), resize="keep",
                                                     cache_dir=str(tmp_path / "cache"), workers=0))
    assert probe.train_images == 24 and probe.test_images == 8 and 0.0 <= probe.linear <= 1.0


def test_a_keep_run_interrupted_mid_epoch_resumes_exactly(mixed_folder, tmp_path):
    from helpers import interrupt_at
    from safetensors.torch import load_file

    from vitkit.training import fit

    full = fit(_keep_config(mixed_folder, tmp_path / "full", epochs=3))
    per_epoch = full.step // 3
    cut = fit(_keep_config(mixed_folder, tmp_path / "cut", epochs=3), on_step=interrupt_at(per_epoch + 1))
    assert cut.status == "interrupted"
    resumed = fit(None, resume=tmp_path / "cut")
    assert resumed.status == "finished" and resumed.step == full.step
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
