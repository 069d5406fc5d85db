"""Few-shot ridge, linear probe and k-NN against NumPy / scikit-learn on the same features;
features computed once and read back from the cache; the `vitkit probe` command."""

import json

import numpy as np
import pytest
import torch

from vitkit.features import FeatureModel, FeatureOptions, dataset_features
from vitkit.probe import BIAS_CONSTANT, fewshot, fit_ridge, knn, linear_probe


def _blobs(n_per_class=30, k=4, d=12, seed=0, spread=2.0):
    centres = np.random.default_rng(100).normal(size=(k, d)) * spread  # shared by every sample
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per_class)
    x = centres[y] + rng.normal(size=(len(y), d))
    return x.astype(np.float32), y


def _closed_form(x, y, k, lam):
    """The textbook solution: standardize, append the bias feature, solve (A^T A + lam I) W = A^T T."""
    x = x.astype(np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-5
    a = np.hstack([(x - mean) / std, np.full((len(x), 1), BIAS_CONSTANT)])
    t = np.where(np.arange(k)[None] == y[:, None], 1.0, -1.0)
    return np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ t), mean, std


@pytest.mark.parametrize("n_per_class", [2, 40], ids=["fewer-images-than-features", "more"])
def test_ridge_equals_numpy_closed_form(n_per_class):
    x, y = _blobs(n_per_class, d=20)
    lambdas = [2.0**-6, 1.0, 2.0**8]
    probes = fit_ridge(x, y, 4, lambdas)
    for p, lam in zip(probes, lambdas, strict=True):
        w, mean, std = _closed_form(x, y, 4, lam)
        np.testing.assert_allclose(p.weights, w, atol=1e-6, rtol=1e-6)
        a = np.hstack([(x - mean) / std, np.full((len(x), 1), BIAS_CONSTANT)])
        np.testing.assert_allclose(p.scores(x), a @ w, atol=1e-6, rtol=1e-6)
    assert np.abs(probes[0].weights - probes[2].weights).max() > 1e-3  # lam matters


def test_fewshot_draws_choose_lambda_on_held_out():
    x, y = _blobs(30, spread=1.0)
    xt, yt = _blobs(20, seed=1, spread=1.0)
    lambdas = [2.0**-10, 2.0**4, 2.0**14]
    res = fewshot(x, y, xt, yt, shots=[1, 5, 29, 30], draws=3, seed=0, lambdas=lambdas)
    assert "skipped" in res[30] and "31" in res[30]["skipped"]
    for k in (1, 5, 29):
        assert len(res[k]["accuracies"]) == 3 and set(res[k]["lambdas"]) <= set(lambdas)
        assert res[k]["mean"] == pytest.approx(np.mean(res[k]["accuracies"]))
        assert res[k]["std"] == pytest.approx(np.std(res[k]["accuracies"]))
    # reproduce one draw by hand: same shots, lam chosen on the held-out images, then test accuracy
    from vitkit.probe import draw_shots

    fit_idx, held_idx = draw_shots(y, 5, 20, np.random.default_rng([0, 5, 1]))
    assert len(set(fit_idx) & set(held_idx)) == 0 and np.all(np.bincount(y[fit_idx]) == 5)
    held_acc = []
    for lam in lambdas:
        w, mean, std = _closed_form(x[fit_idx], y[fit_idx], 4, lam)
        a = np.hstack([(x[held_idx] - mean) / std, np.full((len(held_idx), 1), BIAS_CONSTANT)])
        held_acc.append((a @ w).argmax(1).__eq__(y[held_idx]).mean())
    lam = lambdas[int(np.argmax(held_acc))]
    w, mean, std = _closed_form(x[fit_idx], y[fit_idx], 4, lam)
    at = np.hstack([(xt - mean) / std, np.full((len(xt), 1), BIAS_CONSTANT)])
    assert res[5]["lambdas"][1] == lam
    assert res[5]["accuracies"][1] == pytest.approx(((at @ w).argmax(1) == yt).mean())
    assert res[29]["mean"] > 0.8  # separable blobs


def test_knn_matches_sklearn_neighbours():
    from sklearn.neighbors import NearestNeighbors

    x, y = _blobs(25, k=5, d=16, spread=0.6)
    xt, yt = _blobs(12, k=5, d=16, seed=3, spread=0.6)
    acc, pred = knn(x, y, xt, yt, k=20, temperature=0.07, chunk=7)
    dist, idx = NearestNeighbors(n_neighbors=20, metric="cosine", algorithm="brute").fit(x).kneighbors(xt)
    votes = np.zeros((len(xt), 5))
    for i in range(len(xt)):
        np.add.at(votes[i], y[idx[i]], np.exp((1.0 - dist[i]) / 0.07))
    ref = votes.argmax(1)
    np.testing.assert_array_equal(pred, ref)
    assert acc == pytest.approx((ref == yt).mean())
    assert 0.3 < acc < 1.0  # neither trivial nor perfect on these overlapping blobs
    with pytest.raises(ValueError, match="--temperature"):
        knn(x, y, xt, yt, temperature=0)


def test_linear_probe_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = _blobs(30, spread=0.7)
    xt, yt = _blobs(20, seed=2, spread=0.7)
    acc, pred = linear_probe(x, y, xt, yt, c=0.5)
    scaler = StandardScaler().fit(x)
    ref = LogisticRegression(C=0.5, max_iter=1000).fit(scaler.transform(x), y).predict(scaler.transform(xt))
    np.testing.assert_array_equal(pred, ref)
    assert acc == pytest.approx((ref == yt).mean())


def _opened(model, tmp_path):
    from vitkit.loading import open_model

    model.save_pretrained(tmp_path / "m", data={"image_size": [8, 8], "channels": 1, "mean": [0.3],
                                                "std": [0.4]})
    return open_model(tmp_path / "m")


def _tiny_digits_model():
    from conftest import randomize_

    from vitkit.config import ViTConfig
    from vitkit.model import ViT

    cfg = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_layers=2, num_heads=2,
                    mlp_size=64, num_classes=10)
    torch.manual_seed(0)
    return randomize_(ViT(cfg)).eval()


def test_features_cached_and_equal_to_direct(tmp_path):
    from vitkit.data.arrays import load_digits
    from vitkit.data.preprocess import normalize

    opened = _opened(_tiny_digits_model(), tmp_path)
    _, test = load_digits()
    test = test.subset(np.arange(100))
    calls = []
    opened.model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    opts = FeatureOptions(layer=0, token="mean", batch_size=32, precision="fp32")
    first = dataset_features(FeatureModel(opened, opts), test, tmp_path / "cache")
    assert not first.from_cache and len(calls) == 4 and first.features.shape == (100, 32)
    with torch.no_grad():
        out = opened.model.forward_intermediates(normalize(test.images, opened.spec), layers=[0], norm=True)
    np.testing.assert_allclose(first.features, out.patches[0].mean(1).numpy(), atol=1e-5)
    calls.clear()
    again = dataset_features(FeatureModel(opened, opts), test, tmp_path / "cache")
    assert again.from_cache and not calls  # no forward pass the second time
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.labels, test.labels.numpy())
    layer1 = FeatureOptions(layer=1, batch_size=32, precision="fp32")
    other = dataset_features(FeatureModel(opened, layer1), test, tmp_path / "cache")
    assert not other.from_cache and len(calls) == 4  # other options: another cache entry
    with torch.no_grad():
        opened.model.head.bias += 1.0  # other weights: another cache entry
    assert not dataset_features(FeatureModel(opened, opts), test, tmp_path / "cache").from_cache
    with pytest.raises(ValueError, match="layer 5 .--features.layer.: the model has 2 blocks"):
        FeatureModel(opened, FeatureOptions(layer=5))


def test_bf16_features_leave_the_model_fp32(tmp_path):
    from vitkit.data.arrays import load_digits

    opened = _opened(_tiny_digits_model(), tmp_path)
    test = load_digits()[1].subset(np.arange(40))
    f32 = dataset_features(FeatureModel(opened, FeatureOptions(precision="fp32")), test, cache=False)
    bf16 = dataset_features(FeatureModel(opened, FeatureOptions(precision="bf16")), test, cache=False)
    assert opened.model.head.weight.dtype == torch.float32
    assert bf16.features.dtype == np.float32
    np.testing.assert_allclose(bf16.features, f32.features, atol=0.15)
    assert np.abs(bf16.features - f32.features).max() > 0  # really computed in bf16


def test_probe_command_on_digits(tmp_path, capsys):
    from vitkit.cli import main

    _opened(_tiny_digits_model(), tmp_path)
    out = tmp_path / "probe.json"
    args = ["probe", str(tmp_path / "m"), "--data.dataset", "digits", "--shots", "[1, 5]", "--draws", "2",
            "--cache_dir", str(tmp_path / "cache"), "--out", str(out)]
    main(args)
    text = capsys.readouterr().out
    assert "5-shot linear" in text and "linear probe" in text and "k-NN" in text
    r = json.loads(out.read_text())
    assert r["train_images"] == 1437 and r["test_images"] == 360 and r["feature_dim"] == 32
    assert set(r["fewshot"]) == {"1", "5"} and len(r["fewshot"]["5"]["accuracies"]) == 2
    for acc in (r["fewshot"]["5"]["mean"], r["linear"], r["knn"]):
        assert 0.1 < acc <= 1.0  # random features of digits are far above chance (10%)
    assert not r["cached"]
    main(args)
    assert json.loads(out.read_text())["cached"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["probe", str(tmp_path / "m"), "--features.layer", "7"])
    assert "layer 7 (--features.layer)" in capsys.readouterr().err
