import re

import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image

from vitkit.checkpoint import save_pretrained
from vitkit.cli import main
from vitkit.config import ViTConfig
from vitkit.data.preprocess import InputSpec
from vitkit.model import ViT
from vitkit.visualize import (
    attention_rollout,
    capture_attention,
    class_token_attention,
    make_figures,
    mean_attention_distance,
    noise_images,
    patch_embedding_pcs,
    plot_curves,
    position_embedding_similarity,
    readout,
)
from vitkit.visualize.figures import curves_size, display_image

METRICS = ("epoch,step,train_loss,train_acc,val_loss,val_acc,lr,images_per_s,elapsed_s\n"
           "1,10,2.3,0.10,,,0.001,500,1.0\n"
           "2,20,1.7,0.40,1.8,0.35,0.0008,510,2.0\n"
           "3,30,1.1,0.60,1.2,0.55,0.0003,505,3.0\n")


def softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def random_attention(layers=3, b=2, heads=4, t=10, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [softmax_rows(rng.normal(size=(b, heads, t, t)) * 2) for _ in range(layers)]


def assert_nonblank_png(path, size):
    with Image.open(path) as img:
        assert img.size == tuple(size), f"{path.name}: {img.size} != {size}"
        assert np.asarray(img.convert("RGB"), dtype=np.float64).var() > 0, f"{path.name} is blank"


# ---- the array functions -------------------------------------------------------------------

def test_rollout_of_identity_attention_is_identity():
    eye = np.broadcast_to(np.eye(7), (2, 3, 7, 7))
    for residual in (True, False):
        r = attention_rollout([eye] * 4, residual=residual)
        assert r.shape == (2, 7, 7)
        np.testing.assert_allclose(r, np.broadcast_to(np.eye(7), (2, 7, 7)), atol=1e-12)


def test_rollout_rows_sum_to_one_and_follow_the_definition():
    att = random_attention()
    r = attention_rollout(att)
    np.testing.assert_allclose(r.sum(axis=-1), 1.0, atol=1e-10)
    assert (r >= 0).all()
    eye = np.eye(10)
    layer = [0.5 * a.mean(axis=1) + 0.5 * eye for a in att]  # mean heads, + I, renormalize
    np.testing.assert_allclose(r, layer[2] @ layer[1] @ layer[0], atol=1e-12)
    np.testing.assert_allclose(attention_rollout(att, residual=False).sum(axis=-1), 1.0, atol=1e-10)


def test_class_token_attention_reads_the_pooled_token():
    att = random_attention(layers=2, b=1, heads=2, t=1 + 6)  # class token + 2x3 patches
    cls = class_token_attention(att, (2, 3), 1, "cls")
    assert cls.shape == (2, 1, 2, 2, 3)
    np.testing.assert_allclose(cls[1, 0, 1].ravel(), att[1][0, 1, 0, 1:], rtol=1e-6)
    mean = class_token_attention(att, (2, 3), 1, "mean")
    np.testing.assert_allclose(mean[0, 0, 0].ravel(), att[0][0, 0, 1:, 1:].mean(axis=0), rtol=1e-6)
    no_prefix = random_attention(layers=1, b=1, heads=1, t=6)
    assert readout(no_prefix[0], (2, 3), 0, "mean").shape == (1, 1, 2, 3)
    with pytest.raises(ValueError):
        readout(no_prefix[0], (2, 3), 0, "cls")


def test_mean_attention_distance_is_zero_on_self_and_grows_as_attention_spreads():
    grid, patch = (6, 6), 16
    n = grid[0] * grid[1]
    on_self = np.zeros((1, 2, 1 + n, 1 + n))
    on_self[..., np.arange(1 + n), np.arange(1 + n)] = 1.0
    np.testing.assert_allclose(mean_attention_distance([on_self], grid, patch), 0.0, atol=1e-12)

    rows, cols = np.divmod(np.arange(n), grid[1])
    cheb = np.maximum(abs(rows[:, None] - rows[None]), abs(cols[:, None] - cols[None]))
    distances = []
    for radius in (0, 1, 2, 5):  # uniform attention over a growing square window
        a = (cheb <= radius).astype(float)
        a = np.pad(a, ((1, 0), (1, 0)))  # a class-token row and column
        a[0, 0] = 1.0
        a = a / a.sum(axis=-1, keepdims=True)
        distances.append(mean_attention_distance([a[None, None]], grid, patch)[0, 0])
    assert distances[0] == 0.0
    assert all(x < y for x, y in zip(distances, distances[1:], strict=False))
    # one step right or down is one patch, i.e. `patch` pixels
    right = np.zeros((1, 1, n, n))
    right[0, 0, np.arange(n), np.where(cols < grid[1] - 1, np.arange(n) + 1, np.arange(n) - 1)] = 1.0
    np.testing.assert_allclose(mean_attention_distance([right], grid, patch, 0), [[patch]])


def test_position_embedding_similarity_of_each_position_with_itself_is_one():
    torch.manual_seed(0)
    pe = torch.randn(1, 1 + 12, 16)
    sim = position_embedding_similarity(pe, (3, 4), 1)
    assert sim.shape == (3, 4, 3, 4)
    flat = sim.reshape(12, 12)
    np.testing.assert_allclose(np.diag(flat), 1.0, atol=1e-12)
    np.testing.assert_allclose(flat, flat.T, atol=1e-12)
    assert (np.abs(flat) <= 1 + 1e-12).all()


def test_patch_embedding_pcs_are_orthonormal_and_sorted():
    w = torch.randn(40, 3, 4, 4)
    comps, ratio = patch_embedding_pcs(w, n=28)
    assert comps.shape == (28, 3, 4, 4) and ratio.shape == (28,)
    flat = comps.reshape(28, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(28), atol=1e-10)
    assert (np.diff(ratio) <= 1e-12).all() and 0 < ratio.sum() <= 1
    assert patch_embedding_pcs(torch.randn(5, 1, 2, 2), n=28)[0].shape == (4, 1, 2, 2)


# ---- attention capture in the model --------------------------------------------------------

def test_default_forward_uses_fused_attention_and_capture_does_not(tiny_model, monkeypatch):
    calls = []
    fused = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = tiny_model(x)
    assert len(calls) == tiny_model.config.num_layers
    calls.clear()
    maps = capture_attention(tiny_model, x)
    assert calls == []
    assert len(maps) == 2 and maps[0].shape == (2, 3, 17, 17)
    np.testing.assert_allclose(maps[1].sum(axis=-1), 1.0, atol=1e-5)
    with torch.no_grad():
        feats, _ = tiny_model.forward_features(x, return_attention=True)
        torch.testing.assert_close(tiny_model.forward_head(feats), plain, atol=1e-5, rtol=1e-5)


# ---- figures, report and command -----------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path, tiny_model):
    d = tmp_path / "run"
    spec = {"image_size": [32, 32], "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    save_pretrained(tiny_model, d, {"classes": list("abcde"), "data": spec})
    (d / "metrics.csv").write_text(METRICS)
    return d


def referenced_images(report) -> set[str]:
    return set(re.findall(r'<img src="([^"]+)"', report.read_text()))


def test_figures_are_written_nonblank_at_their_size_and_in_the_report(tmp_path, tiny_model, run_dir):
    spec = InputSpec.for_model(tiny_model.config.image_hw, tiny_model.config.num_channels)[0]
    out = tmp_path / "figs"
    result = make_figures(tiny_model, spec, out, noise_images(spec, 3), run_dir, max_images=2)
    names = {p.name for p in result.figures}
    assert names == {"attention_1.png", "attention_2.png", "rollout.png", "attention_distance.png",
                     "position_similarity.png", "patch_embedding_pcs.png", "curves.png"}
    assert result.skipped == {}
    for path, size in result.figures.items():
        assert_nonblank_png(path, size)
    assert result.figures[out / "curves.png"] == curves_size() == (1200, 400)
    assert result.figures[out / "attention_distance.png"] == (720, 480)
    grid_w, grid_h = result.figures[out / "attention_1.png"]  # 2 layers x 3 heads of 120 px panels
    assert grid_w == 62 + 3 * 120 + 92 and grid_h > 2 * 120
    assert referenced_images(result.report) == names
    text = result.report.read_text()
    assert "random-noise" in text and "http" not in text.replace("http-equiv", "")


def test_mean_pooled_model_without_class_token_and_missing_metrics(tmp_path):
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_layers=1,
                    num_heads=2, mlp_size=64, num_classes=3, pool="mean", class_token=False,
                    pos_embed="sincos2d")
    model = randomize_(ViT(cfg).eval())
    spec = InputSpec.for_model(cfg.image_hw, cfg.num_channels)[0]
    result = make_figures(model, spec, tmp_path, noise_images(spec, 2), None, max_images=1)
    assert "Training curves" in result.skipped
    assert "mean token" in result.report.read_text()
    for path, size in result.figures.items():
        assert_nonblank_png(path, size)
    assert referenced_images(result.report) == {p.name for p in result.figures}


def test_plot_curves_handles_empty_validation_cells_and_no_rows(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text(METRICS)
    out = plot_curves(csv, tmp_path / "curves.png")
    assert_nonblank_png(out, (1200, 400))
    csv.write_text(METRICS.splitlines()[0] + "\n")
    assert_nonblank_png(plot_curves(csv, tmp_path / "empty.png"), (1200, 400))


def test_cli_with_images(tmp_path, run_dir, capsys):
    rng = np.random.default_rng(0)
    files = []
    for i, (size, mode) in enumerate([((50, 40), "RGB"), ((8, 8), "L")]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((rng.random(size[::-1]) * 255).astype(np.uint8)).convert(mode).save(p)
        files.append(str(p))
    out = tmp_path / "out"
    main(["visualize", str(run_dir), *files, "--out", str(out), "--max_images", "2"])
    printed = capsys.readouterr().out
    assert f"wrote {out / 'report.html'}" in printed
    pngs = {p.name for p in out.glob("*.png")}
    assert {"attention_1.png", "attention_2.png", "rollout.png", "curves.png"} <= pngs
    assert referenced_images(out / "report.html") == pngs
    assert "img0.png" in (out / "report.html").read_text()
    assert "random-noise" not in (out / "report.html").read_text()


def test_cli_without_images_uses_data_folder_or_noise(tmp_path, run_dir):
    folder = tmp_path / "data" / "cat"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(folder / f"{i}.png")
    main(["visualize", str(run_dir), "--out", str(tmp_path / "d"), "--data", str(tmp_path / "data"),
          "--num_samples", "2", "--max_images", "1"])
    report = (tmp_path / "d" / "report.html").read_text()
    assert "2 of 3 images sampled" in report and "random-noise" not in report

    weights_only = tmp_path / "weights"  # a model directory without metrics.csv
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights_only / name).write_bytes((run_dir / name).read_bytes())
    main(["visualize", str(weights_only), "--out", str(tmp_path / "n"), "--num_samples", "2",
          "--max_images", "1"])
    report = (tmp_path / "n" / "report.html").read_text()
    assert "random-noise" in report and "no metrics.csv" in report
    pngs = {p.name for p in (tmp_path / "n").glob("*.png")}
    assert referenced_images(tmp_path / "n" / "report.html") == pngs


def test_cli_missing_path_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["visualize", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitkit: error:") and "missing" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_digits_sample_for_a_grayscale_8x8_model(tmp_path):
    pytest.importorskip("vitkit.data.arrays")
    from vitkit.visualize import sample_data

    cfg = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_layers=2,
                    num_heads=2, mlp_size=64, num_classes=10)
    spec = InputSpec.for_model(cfg.image_hw, cfg.num_channels)[0]
    inputs = sample_data("digits", spec, 4, seed=0)
    assert inputs.raw.shape == (4, 1, 8, 8) and inputs.raw.dtype == torch.uint8
    result = make_figures(randomize_(ViT(cfg).eval()), spec, tmp_path, inputs, max_images=1)
    for path, size in result.figures.items():
        assert_nonblank_png(path, size)
    shown = display_image(inputs.raw[0].numpy())  # 8x8 digits are enlarged with sharp pixels
    assert shown.shape == (96, 96) and (shown[:12, :12] == shown[0, 0]).all()


def test_foreign_checkpoint_through_vitkit_loading(tmp_path):
    pytest.importorskip("vitkit.loading")
    timm = pytest.importorskip("timm")
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32,
                            patch_size=8, depth=1)
    torch.save(net.state_dict(), tmp_path / "timm.pth")
    main(["visualize", str(tmp_path / "timm.pth"), "--out", str(tmp_path / "o"), "--num_samples", "1"])
    pngs = {p.name for p in (tmp_path / "o").glob("*.png")}
    assert "attention_1.png" in pngs and referenced_images(tmp_path / "o" / "report.html") == pngs
