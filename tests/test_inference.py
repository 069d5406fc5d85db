"""One inference layer: vitkit.inference.prepare's Runner is the one place that decides the
inference precision and wraps a forward pass in autocast, and predict, evaluate and serve give
through it what an eager model computes on the same pixels."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_ARGS
from PIL import Image

from vitkit.cli import main
from vitkit.config import ViTConfig
from vitkit.inference import Runner, as_runner, prepare
from vitkit.model import ViT
from vitkit.precision import native_bf16

SRC = Path(__file__).resolve().parents[1] / "src" / "vitkit"

# Training's own autocast, outside vitkit.inference: {module or package: function, or None for any}.
TRAINING = {
    "vitkit.training.trainer": "Trainer.train_step",  # the training step
    "vitkit.bench": "make_step",  # the training step the benchmark times
    "vitkit.training.planner": "measure_steps",  # the training step (and its evaluation) the planner times
}
DECIDE = {"inference_precision"}
WRAP = {"autocast", "weights_autocast"}


def precision_sites() -> list[tuple[str, str, str]]:
    """(module, enclosing function, name called) for every call that decides an inference
    precision (inference_precision) or wraps code in autocast (vitkit.precision.autocast,
    torch.autocast, any *.autocast), in every module of src/vitkit but vitkit.precision, which
    defines the decisions. A call with enabled=False turns autocast off and does not count."""
    sites = []

    def visit(node: ast.AST, module: str, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, module, [*scope, child.name])
                continue
            if isinstance(child, ast.Call):
                f = child.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if name in DECIDE | WRAP and not any(k.arg == "enabled" and isinstance(k.value, ast.Constant)
                                                     and k.value.value is False for k in child.keywords):
                    sites.append((module, ".".join(scope), name))
            visit(child, module, scope)

    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts != ["vitkit", "precision"]:
            visit(ast.parse(path.read_text()), ".".join(parts), [])
    return sites


def training_own(module: str, function: str) -> bool:
    for name, where in TRAINING.items():
        if module == name or module.startswith(name + "."):
            return where is None or function == where or function.startswith(where + ".")
    return False


def test_one_place_decides_and_wraps_inference_precision():
    """The rule: outside vitkit.precision (which only decides), a forward pass runs under
    autocast, or an inference precision is decided, in one place: vitkit.inference, where
    `prepare` decides and `Runner.apply` wraps. Predict, evaluate, serve, features, embed,
    probe, figures and the benchmark's inference all run through that Runner. Training is the
    exception: its step autocasts itself (the trainer's, and the one vitkit.bench times)."""
    sites = precision_sites()
    inference = sorted(s for s in sites if not training_own(s[0], s[1]))
    assert inference == [("vitkit.inference", "Runner.apply", "autocast"),
                         ("vitkit.inference", "prepare", "inference_precision")], inference
    assert ("vitkit.training.trainer", "Trainer.train_step", "autocast") in sites  # the walk sees them


# ---- the runner -----------------------------------------------------------------------------

TINY = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64,
                 num_classes=5)


def tiny() -> ViT:
    from conftest import randomize_

    torch.manual_seed(0)
    return randomize_(ViT(TINY))


def test_bf16_runs_a_copy_and_leaves_the_model_as_it_was():
    model = tiny().train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    runner = prepare(model, "cpu", "bf16", engine="torch", compile=False)
    assert (runner.engine, runner.precision) == ("torch", "bf16") and runner.model is model
    assert runner.module is not model and runner.module.head.weight.dtype == torch.bfloat16
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model.eval()(x).float()
    model.train()
    torch.testing.assert_close(runner(x).float(), want, atol=0, rtol=0)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert v.dtype == weights[k].dtype and torch.equal(v, weights[k]), k


def test_fp32_runs_the_model_in_eval_mode_and_gives_its_modes_back():
    model = tiny().train()
    model.blocks[0].eval()  # a frozen part keeps its own mode
    runner = prepare(model, "cpu", "fp32", engine="torch")
    assert runner.module is model and runner.precision == "fp32"
    x = torch.randn(2, 3, 16, 16)
    got = runner(x)
    assert not got.requires_grad
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), atol=0, rtol=0)
    model.train()
    model.blocks[0].eval()
    runner(x)
    assert model.training and not model.blocks[0].training


def test_as_runner_runs_weights_as_stored():
    from vitkit.inference import for_inference

    model = for_inference(tiny(), "bf16")
    assert as_runner(model).precision == "bf16" and as_runner(tiny()).precision == "fp32"
    runner = prepare(tiny(), "cpu", "fp32", engine="torch")
    assert as_runner(runner) is runner and isinstance(runner, Runner)
    with pytest.raises(ValueError, match="precision"):
        prepare(tiny(), "cpu", "fp16")


# ---- predict, evaluate and serve against an eager model ---------------------------------------



@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained digits run and a folder of digits (class/NN.png, 8x8 grayscale) to run it on."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("inference")
    main(["train", *TINY_ARGS, "--data.per_class", "40", "--run.epochs", "3", "--run.out", str(root / "run")])
    digits = load_digits()
    folder = root / "images"
    rng = np.random.default_rng(0)
    for i in rng.choice(len(digits.images), 40, replace=False):
        d = folder / str(digits.target[i])
        d.mkdir(parents=True, exist_ok=True)
        pixels = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, "L").save(d / f"{i:04d}.png")
    return root / "run", folder


def expected(run: Path, files: list[Path], precision: str, flip: bool = False) -> torch.Tensor:
    """Probabilities computed here: the saved weights in an eager ViT, each file read as 8-bit
    grayscale, scaled to [0, 1] and normalized by the mean and std stored in config.json, run
    under bf16 autocast for bf16; with flip, the softmax of the mean logits of each image and
    its mirror image."""
    from safetensors.torch import load_file

    meta = json.loads((run / "config.json").read_text())
    model = ViT(ViTConfig(**meta["model"]))
    model.load_state_dict(load_file(run / "model.safetensors"))
    model.eval()
    mean, std = meta["data"]["mean"][0], meta["data"]["std"][0]
    assert meta["data"]["image_size"] == [8, 8] and meta["data"]["channels"] == 1
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("L"), np.float32))[None]
                     for f in files])
    x = (x / 255.0 - mean) / std
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x).float()
        if flip:
            logits = (logits + model(x.flip(-1)).float()) / 2
        return logits.softmax(-1)


def test_flip_answers_with_the_mean_logits_of_each_image_and_its_mirror(saved, tmp_path, capsys):
    run, folder = saved
    files = sorted(folder.rglob("*.png"))
    probs, plain = expected(run, files, "fp32", flip=True), expected(run, files, "fp32")
    assert (probs - plain).abs().max() > 1e-3  # the mirror images change the answers
    capsys.readouterr()
    main(["predict", str(run), str(folder), "--json", "true", "--topk", "10", "--precision", "fp32",
          "--engine", "torch", "--flip", "true"])
    for r, p in zip(sorted(json.loads(capsys.readouterr().out), key=lambda r: r["file"]), probs, strict=True):
        got = torch.zeros(10)
        got[[t["index"] for t in r["top"]]] = torch.tensor([t["probability"] for t in r["top"]])
        torch.testing.assert_close(got, p, atol=1e-5, rtol=0)
    main(["evaluate", str(run), "--data.dataset", "folder", "--data.path", str(folder), "--json", "true",
          "--precision", "fp32", "--engine", "torch", "--flip", "true", "--out", str(tmp_path / "eval")])
    ev = json.loads(capsys.readouterr().out)
    labels = torch.tensor([int(f.parent.name) for f in files])
    assert ev["flip"] is True and ev["top1"] == float((probs.argmax(1) == labels).float().mean())
    assert ev["loss"] == pytest.approx(float(torch.nn.functional.nll_loss(probs.log(), labels)), abs=1e-5)


@pytest.mark.precision
@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_predict_evaluate_and_serve_give_what_the_eager_model_gives(saved, precision, tmp_path, capsys,
                                                                     monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vitkit.loading import open_model
    from vitkit.serve import ServeOptions, create_app

    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path / "cache"))  # engine auto: a graph of its own
    run, folder = saved
    files = sorted(folder.rglob("*.png"))
    decided = "bf16" if precision == "auto" and native_bf16("cpu") else "fp32"
    tol = 1e-5  # probabilities are printed to 6 decimals
    probs = expected(run, files, decided)
    labels = torch.tensor([int(f.parent.name) for f in files])

    capsys.readouterr()
    main(["predict", str(run), str(folder), "--json", "true", "--topk", "10", "--precision", precision])
    predicted = {r["file"]: r["top"] for r in json.loads(capsys.readouterr().out)}
    for f, p in zip(files, probs, strict=True):
        top = predicted[str(f)]
        assert top[0]["index"] == int(p.argmax())
        got = torch.zeros(10)
        got[[t["index"] for t in top]] = torch.tensor([t["probability"] for t in top])
        torch.testing.assert_close(got, p, atol=tol, rtol=0)

    main(["evaluate", str(run), "--data.dataset", "folder", "--data.path", str(folder), "--json", "true",
          "--precision", precision, "--out", str(tmp_path / "eval")])
    ev = json.loads(capsys.readouterr().out)
    assert ev["images"] == len(files) and ev["precision"] == decided
    assert ev["top1"] == float((probs.argmax(1) == labels).float().mean())
    loss = float(torch.nn.functional.nll_loss(probs.log(), labels))
    assert ev["loss"] == pytest.approx(loss, abs=tol)

    with TestClient(create_app(open_model(str(run)), ServeOptions(precision=precision))) as client:
        model = client.get("/v1/model").json()
        # a server has no end of work: with native bf16, "auto" runs the graph in fp32 where
        # that measured faster on this machine than PyTorch bf16 (vitkit.export.route)
        assert model["precision"] == decided or (decided, model["precision"], model["engine"]) == (
            "bf16", "fp32", "onnxruntime")
        probs = expected(run, files, model["precision"])
        for f, p in zip(files, probs, strict=True):
            r = client.post("/v1/predict?topk=10", content=f.read_bytes(),
                            headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            top = r.json()["top"]
            assert top[0]["index"] == int(p.argmax())
            got = torch.zeros(10)
            got[[t["index"] for t in top]] = torch.tensor([t["probability"] for t in top])
            torch.testing.assert_close(got, p, atol=tol, rtol=0)
