"""How good is a frozen representation: three read-outs on cached features (vitkit.features).

- few-shot linear accuracy, as in the paper (Section 4.1): a regularized least-squares fit of
  k training images per class to {-1, 1}^K targets, solved in closed form; the regularization
  is chosen on held-out training images among a small grid, and the accuracy on the test split
  is averaged over several seeded draws of the k images;
- linear probe: logistic regression on every training feature (scikit-learn);
- k-NN: cosine similarity, the k = 20 nearest training images vote with weight exp(sim / T),
  T = 0.07, as in DINO (Caron et al., 2021).

Features are standardized with the statistics of the images each model is fitted on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

SHOTS = (1, 5, 10, 25)
LAMBDAS = tuple(2.0 ** np.arange(-10, 20, 2))  # the regularization grid of the few-shot fit
BIAS_CONSTANT = 100.0  # a constant feature for the bias, large so its weight is barely regularized


# ---- few-shot: regularized least squares in closed form ------------------------------------

@dataclass
class RidgeProbe:
    """A linear map from standardized features (plus a bias feature) to K class scores."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    weights: np.ndarray  # (D + 1, K)
    lam: float

    def scores(self, x: np.ndarray) -> np.ndarray:
        return ridge_design(x, self.mean, self.std) @ self.weights

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.scores(x).argmax(1)


def ridge_design(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardized features with the constant bias feature appended, float64."""
    z = (np.asarray(x, np.float64) - mean) / std
    return np.concatenate([z, np.full((len(z), 1), BIAS_CONSTANT)], axis=1)


def fit_ridge(x: np.ndarray, y: np.ndarray, num_classes: int, lambdas: Sequence[float] = LAMBDAS
              ) -> list[RidgeProbe]:
    """argmin_W |XW - T|^2 + lam |W|^2 with T = 2 onehot(y) - 1, for every lam at the cost of one
    eigendecomposition: of X^T X when there are at least as many images as features, else of
    X X^T (W = X^T (X X^T + lam I)^-1 T, the same solution)."""
    x = np.asarray(x, np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-5
    a = ridge_design(x, mean, std)
    t = 2.0 * np.eye(num_classes)[np.asarray(y)] - 1.0
    n, d = a.shape
    primal = n >= d
    eig, q = np.linalg.eigh(a.T @ a if primal else a @ a.T)
    eig = np.clip(eig, 0.0, None)
    qt_rhs = q.T @ (a.T @ t if primal else t)
    out = []
    for lam in lambdas:
        w = q @ (qt_rhs / (eig + lam)[:, None])
        out.append(RidgeProbe(mean, std, w if primal else a.T @ w, float(lam)))
    return out


def draw_shots(y: np.ndarray, shots: int, holdout: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of `shots` images per class to fit on and up to `holdout` further ones per class
    to choose the regularization on."""
    fit, held = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fit.append(idx[:shots])
        held.append(idx[shots:shots + holdout])
    return np.concatenate(fit), np.concatenate(held)


def fewshot(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
            shots: Sequence[int] = SHOTS, draws: int = 5, seed: int = 0, holdout: int = 20,
            lambdas: Sequence[float] = LAMBDAS) -> dict[int, dict]:
    """Few-shot linear accuracy on the test features for each shot count: mean and standard
    deviation over `draws` seeded draws, with the chosen regularization of each draw.
    Shot counts that leave a class no held-out image are skipped (with the reason)."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    counts = np.bincount(train_y, minlength=num_classes)
    present = counts[counts > 0]
    out: dict[int, dict] = {}
    for k in shots:
        if k < 1:
            raise ValueError(f"shots {k}: expected a positive number of images per class")
        if present.min() <= k:
            out[k] = {"skipped": f"a class has only {present.min()} training images; {k} shots need "
                                 f"{k + 1} (one held out)"}
            continue
        accs, chosen = [], []
        for draw in range(draws):
            rng = np.random.default_rng([seed, k, draw])
            fit_idx, held_idx = draw_shots(train_y, k, holdout, rng)
            probes = fit_ridge(train_x[fit_idx], train_y[fit_idx], num_classes, lambdas)
            held = [float((p.predict(train_x[held_idx]) == train_y[held_idx]).mean()) for p in probes]
            best = probes[int(np.argmax(held))]  # the first (smallest) lam among equals
            accs.append(float((best.predict(test_x) == test_y).mean()))
            chosen.append(best.lam)
        out[k] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "accuracies": accs,
                  "lambdas": chosen}
    return out


# ---- linear probe ---------------------------------------------------------------------------

def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 c: float = 1.0, max_iter: int = 1000) -> tuple[float, np.ndarray]:
    """Logistic regression (L2, inverse strength c) on standardized features; returns the test
    accuracy and the predictions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    clf.fit(train_x, train_y)
    pred = clf.predict(test_x)
    return float((pred == test_y).mean()), pred


# ---- k-NN -----------------------------------------------------------------------------------

@torch.no_grad()
def knn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20,
        temperature: float = 0.07, chunk: int = 1024) -> tuple[float, np.ndarray]:
    """Weighted k-NN on cosine similarity: each of the k most similar training images votes for
    its class with weight exp(similarity / temperature). Returns test accuracy and predictions."""
    if temperature <= 0:
        raise ValueError(f"--temperature {temperature}: expected a positive number")
    train = torch.nn.functional.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    test = torch.nn.functional.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(train_y, dtype=torch.long)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train))
    preds = []
    for i in range(0, len(test), chunk):
        sim, idx = (test[i:i + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes).scatter_add_(1, labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    pred = torch.cat(preds).numpy()
    return float((pred == test_y).mean()), pred


# ---- all of it on a model and a data set ----------------------------------------------------

@dataclass
class ProbeResult:
    model: str
    data: str
    train_images: int
    test_images: int
    feature_dim: int
    token: str
    layer: int
    precision: str
    fewshot: dict[int, dict] = field(default_factory=dict)
    linear: float | None = None
    knn: float | None = None
    knn_k: int = 20
    temperature: float = 0.07
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False  # both feature sets were read from the cache

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fewshot"] = {str(k): v for k, v in self.fewshot.items()}
        return d


def probe_features(train, test, shots: Sequence[int] = SHOTS, draws: int = 5, seed: int = 0,
                   linear: bool = True, c: float = 1.0, knn_k: int = 20, temperature: float = 0.07,
                   result: ProbeResult | None = None) -> ProbeResult:
    """The three read-outs on computed Features (train: fitted on; test: measured on)."""
    r = result or ProbeResult("", "", len(train.features), len(test.features), train.features.shape[1],
                              "", -1, "")
    args = (train.features, train.labels, test.features, test.labels)
    t = time.perf_counter()
    if shots:
        r.fewshot = fewshot(*args, shots=shots, draws=draws, seed=seed)
        r.seconds["fewshot"] = round(time.perf_counter() - t, 3)
    if linear:
        t = time.perf_counter()
        r.linear = linear_probe(*args, c=c)[0]
        r.seconds["linear"] = round(time.perf_counter() - t, 3)
    if knn_k:
        t = time.perf_counter()
        r.knn = knn(*args, k=knn_k, temperature=temperature)[0]
        r.knn_k, r.temperature = min(knn_k, len(train.features)), temperature
        r.seconds["knn"] = round(time.perf_counter() - t, 3)
    return r


def probe_model(opened, data_cfg, options=None, cache_dir=None, **readouts) -> ProbeResult:
    """Features of the data set's training and test (validation) split, computed once (cached),
    then the read-outs of probe_features (`readouts`: shots, draws, seed, linear, c, knn_k,
    temperature)."""
    import dataclasses

    from .features import FeatureModel, FeatureOptions, dataset_features
    from .plan import load_data

    options = options or FeatureOptions()
    fm = FeatureModel(opened, options)
    # at the model's size and patches; photos of another shape read as the model was trained
    # unless --data.resize says otherwise
    resize = data_cfg.resize if data_cfg.resize != "auto" else opened.spec.resize
    data = load_data(dataclasses.replace(data_cfg, image_size=tuple(opened.spec.image_size), resize=resize,
                                         channels=opened.spec.channels), model=opened.model.config)
    data.require_labels(str(data_cfg.path or data_cfg.dataset), "probing")
    t = time.perf_counter()
    train = dataset_features(fm, data.train, cache_dir, data_cfg.workers)
    test = dataset_features(fm, data.val, cache_dir, data_cfg.workers)
    feat_s = round(time.perf_counter() - t, 3)
    where = data_cfg.path or data_cfg.dataset
    r = ProbeResult(opened.source, str(where), len(train.features), len(test.features),
                    int(train.features.shape[1]), fm.token, fm.layer, fm.precision,
                    cached=train.from_cache and test.from_cache)
    r.seconds["features"] = feat_s
    return probe_features(train, test, result=r, **readouts)


def probe_path(weights: str, data_cfg, options=None, cache_dir=None, out: str | None = None, load=None,
               log=print, **readouts) -> ProbeResult:
    """`vitkit probe`: open `weights` (anything vitkit.open_model opens), probe it on the data
    (probe_model; `readouts` as there), log the table and write the result as JSON to `out`.
    `out` is checked before any work."""
    import json

    from .checkpoint import check_output_file
    from .files import atomic_write_json
    from .loading import open_model

    if out:
        check_output_file(out)
    result = probe_model(open_model(weights, load), data_cfg, options, cache_dir, **readouts)
    log(format_table(result))
    if out:
        atomic_write_json(out, json.loads(json.dumps(result.to_dict())))
        log(f"wrote {out}")
    return result


def format_table(r: ProbeResult) -> str:
    """One table: every read-out's test accuracy (few-shot: mean +- std over the draws)."""
    rows = []
    for k, v in r.fewshot.items():
        if "skipped" in v:
            rows.append((f"{k}-shot linear", "skipped", v["skipped"]))
        else:
            lam = ", ".join(f"2^{math.log2(x):.0f}" for x in sorted(set(v["lambdas"])))
            rows.append((f"{k}-shot linear", f"{v['mean']:.2%} +- {v['std']:.2%}",
                         f"{len(v['accuracies'])} draws, lambda {lam}"))
    if r.linear is not None:
        rows.append(("linear probe", f"{r.linear:.2%}", "logistic regression, all training features"))
    if r.knn is not None:
        rows.append(("k-NN", f"{r.knn:.2%}", f"cosine, k={r.knn_k}, votes exp(sim / {r.temperature:g})"))
    w0 = max([len("read-out")] + [len(a) for a, _, _ in rows])
    w1 = max([len("accuracy")] + [len(b) for _, b, _ in rows])
    head = (f"{r.model}: {r.token} token of block {r.layer}, {r.feature_dim} features ({r.precision}); "
            f"{r.train_images} training, {r.test_images} test images of {r.data}")
    lines = [head, f"{'read-out':<{w0}}  {'accuracy':<{w1}}  notes"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)
