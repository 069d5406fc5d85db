"""The ONNX route of fp32 CPU inference (vitkit.export.route): taken only where it pays, run
from a cache keyed by the weights, and giving eager fp32's logits and top-1 in predict,
evaluate and serve."""

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from test_export import CLASSES, SPEC, prepared, real_images  # noqa: E402

from vitkit.export.route import EXPORT_PAYS_AFTER, graph_path, route_problem  # noqa: E402
from vitkit.export.runtime import OnnxViT  # noqa: E402
from vitkit.inference import for_inference, prepare  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def test_fp32_inference_runs_the_graph_cached_for_these_weights(tiny_model, cache, capsys):
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        eager = tiny_model(x)
    runner = for_inference(copy.deepcopy(tiny_model), "fp32", engine="auto", images=None)  # no end: a server
    assert isinstance(runner, OnnxViT)
    torch.testing.assert_close(runner(x), eager, atol=1e-4, rtol=1e-4)
    assert torch.equal(runner(x).argmax(1), eager.argmax(1))
    assert "exported the graph once" in capsys.readouterr().err
    assert [p.name for p in cache.glob("*.onnx")] == [graph_path(tiny_model).name]

    # cached: a one-image job takes the route too, without exporting again
    again = for_inference(copy.deepcopy(tiny_model), "fp32", engine="auto", images=1)
    assert isinstance(again, OnnxViT) and "exported" not in capsys.readouterr().err

    # changed weights are another key: a short job runs eagerly rather than export, and a
    # graph made for them gives their logits, never the stale ones
    changed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        changed.head.bias += 1.0
    assert graph_path(changed) != graph_path(tiny_model)
    assert for_inference(changed, "fp32", engine="auto", images=1) is changed
    routed = for_inference(changed, "fp32", engine="onnx")
    with torch.no_grad():
        torch.testing.assert_close(routed(x), changed(x), atol=1e-4, rtol=1e-4)
    assert len(list(cache.glob("*.onnx"))) == 2


def test_route_is_taken_only_where_it_pays(tiny_model, cache):
    short = for_inference(copy.deepcopy(tiny_model), "fp32", engine="auto", images=EXPORT_PAYS_AFTER - 1)
    assert isinstance(short, type(tiny_model)) and not cache.exists()  # nothing cached: eager
    m = copy.deepcopy(tiny_model)
    assert for_inference(m, "bf16", engine="auto", images=None) is m  # bf16 runs on the module
    with pytest.raises(ValueError, match="engine onnx: inference runs in bf16"):
        for_inference(copy.deepcopy(tiny_model), "bf16", engine="onnx")
    m = copy.deepcopy(tiny_model)
    assert for_inference(m, "fp32", engine="torch", images=None) is m
    assert for_inference(m, "fp32") is m  # the library default: the module itself
    assert "torch.compile" in route_problem(tiny_model, "fp32", compile=True)
    assert "not a plain vitkit ViT" in route_problem(nn.Sequential(tiny_model), "fp32")
    with pytest.raises(ValueError, match="engine 'fast'"):
        for_inference(copy.deepcopy(tiny_model), "fp32", engine="fast")
    assert not cache.exists()


def test_a_damaged_cached_graph_is_exported_again(tiny_model, cache):
    path = graph_path(tiny_model)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx file")
    runner = for_inference(copy.deepcopy(tiny_model), "fp32", engine="onnx")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), tiny_model(x), atol=1e-4, rtol=1e-4)
    assert path.stat().st_size > 1000


def saved_with_images(model, tmp_path):
    """The model saved as a model folder with the test spec, and real images to run it on."""
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir, classes=CLASSES, data={
        "image_size": [32, 32], "channels": 3, "mean": SPEC.mean, "std": SPEC.std})
    return model_dir, real_images(tmp_path / "images")


@pytest.mark.precision
def test_predict_evaluate_and_serve_give_eager_top1_through_the_route(tmp_path, tiny_model, cache,
                                                                      monkeypatch):
    from vitkit.data.pipeline import DataConfig
    from vitkit.evaluation import evaluate_path
    from vitkit.loading import open_model
    from vitkit.predict import predict_paths
    from vitkit.serve.inference import Engine

    monkeypatch.setenv("VITKIT_NATIVE_BF16", "0")  # auto is fp32, as on a CPU without native bf16
    monkeypatch.setattr("vitkit.export.route.openvino_available", lambda: False)  # auto: onnxruntime
    model_dir, files = saved_with_images(tiny_model, tmp_path)
    eager = predict_paths(model_dir, files, topk=2, engine="torch")
    routed = predict_paths(model_dir, files, topk=2, engine="onnx")
    assert [r["top"][0]["class"] for r in routed] == [r["top"][0]["class"] for r in eager]
    for a, b in zip(routed, eager, strict=True):
        assert a["top"][0]["probability"] == pytest.approx(b["top"][0]["probability"], abs=1e-4)
    # the graph is cached now: "auto" takes it even for a short job
    folder = tmp_path / "data"
    for i, f in enumerate(files):
        (folder / CLASSES[i % len(CLASSES)]).mkdir(parents=True, exist_ok=True)
        (folder / CLASSES[i % len(CLASSES)] / f.name).write_bytes(f.read_bytes())
    data = DataConfig(dataset="folder", path=str(folder))
    ev = {e: evaluate_path(model_dir, data, tmp_path / e, engine=e, log=None).result
          for e in ("torch", "auto")}
    assert ev["auto"].top1 == ev["torch"].top1
    assert ev["auto"].loss == pytest.approx(ev["torch"].loss, abs=1e-4)
    engine = Engine(open_model(model_dir))
    assert engine.engine == "onnxruntime" and engine.describe()["engine"] == "onnxruntime"
    x = prepared(files, SPEC)
    with torch.no_grad():
        probs = tiny_model(x).softmax(-1)
    got = torch.stack(engine.run_batch("predict", [engine.prepare(opened_image(f)) for f in files]))
    assert torch.equal(got.argmax(1), probs.argmax(1))
    monkeypatch.setenv("VITKIT_NATIVE_BF16", "1")  # bf16 where native: the module, where timed faster
    monkeypatch.setattr("vitkit.export.route._time_call", lambda m, x: 1.0 if m.engine == "torch" else 2.0)
    assert Engine(open_model(model_dir)).engine == "torch"


def opened_image(path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im


@pytest.mark.openvino
def test_engine_openvino_runs_the_same_graph_with_eager_logits(tmp_path, tiny_model, cache, monkeypatch):
    pytest.importorskip("openvino")
    from vitkit.formats.openvino import OpenVINOViT
    from vitkit.loading import open_model
    from vitkit.predict import predict_paths
    from vitkit.serve.inference import Engine

    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        eager = tiny_model(x)
    runner = prepare(copy.deepcopy(tiny_model), "cpu", "fp32", engine="openvino")
    assert runner.engine == "openvino" and isinstance(runner.module, OpenVINOViT)
    torch.testing.assert_close(runner(x), eager, atol=1e-4, rtol=1e-4)
    assert [p.name for p in cache.glob("*.onnx")] == [graph_path(tiny_model).name]  # ORT's graph, shared
    assert any((cache / "openvino").iterdir())  # the compiled blob, read back by the next compile
    twin = copy.deepcopy(runner.module)  # a server's worker copy: its own compiled model
    torch.testing.assert_close(twin(x[:1]), eager[:1], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="engine openvino: inference runs in bf16"):
        prepare(copy.deepcopy(tiny_model), "cpu", "bf16", engine="openvino")

    monkeypatch.setenv("VITKIT_NATIVE_BF16", "0")
    model_dir, files = saved_with_images(tiny_model, tmp_path)
    plain = predict_paths(model_dir, files, topk=2, engine="torch")
    ov = predict_paths(model_dir, files, topk=2, engine="openvino")
    for a, b in zip(ov, plain, strict=True):
        assert a["top"][0]["class"] == b["top"][0]["class"]
        assert a["top"][0]["probability"] == pytest.approx(b["top"][0]["probability"], abs=1e-4)
    served = Engine(open_model(model_dir), engine="openvino")
    assert served.describe()["engine"] == "openvino"


# Two compiled models released first in, first out, then a signal handled by Python (as Ctrl-C
# in a training run is): OpenVINO's CPU plugin left the thread on a freed alternate signal
# stack, and the signal crashed the process (vitkit.formats.openvino.kept_signal_stack).
SIGNAL_CASE = """
import gc, os, signal, sys
from vitkit.formats.openvino import compile_file
first, second = compile_file(sys.argv[1], 1), compile_file(sys.argv[1], 1)
del first; gc.collect()
del second; gc.collect()
caught = []
signal.signal(signal.SIGINT, lambda *_: caught.append(1))
churn = [bytearray(1 << 20) for _ in range(64)]
del churn
os.kill(os.getpid(), signal.SIGINT)
print("signal handled", len(caught))
"""


def test_a_signal_after_openvino_models_come_and_go_is_handled(tmp_path, tiny_model):
    pytest.importorskip("openvino")
    import subprocess
    import sys

    from vitkit.export import export_model

    path, _ = export_model(tiny_model, CLASSES, SPEC, tmp_path / "m.onnx")
    out = subprocess.run([sys.executable, "-c", SIGNAL_CASE, str(path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "signal handled 1" in out.stdout, (out.returncode, out.stderr[-2000:])


def test_engine_openvino_without_openvino_is_one_line(tiny_model, cache, monkeypatch):
    monkeypatch.setattr("vitkit.export.route.openvino_available", lambda: False)
    with pytest.raises(ValueError, match=r"engine openvino: openvino is not installed \(pip install"):
        for_inference(copy.deepcopy(tiny_model), "fp32", engine="openvino")
    assert not cache.exists()


@pytest.mark.openvino
def test_auto_times_both_runtimes_once_and_runs_each_batch_on_the_faster(tiny_model, cache, monkeypatch):
    pytest.importorskip("openvino")
    import json

    from vitkit.formats.openvino import ByBatch, OpenVINOViT
    from vitkit.inference import prepare

    calls, fastest = [], {1: "onnx", 8: "openvino"}

    def timed(module, x):  # injected timings: the runtime named in `fastest` takes half as long
        calls.append((module.engine, len(x)))
        return 0.01 if module.engine == fastest[len(x)] else 0.02

    monkeypatch.setattr("vitkit.export.route._time_call", timed)
    runner = prepare(copy.deepcopy(tiny_model), "cpu", "fp32", engine="auto", images=None)
    split = runner.module
    assert isinstance(split, ByBatch) and (split.small.engine, split.large.engine) == ("onnx", "openvino")
    from vitkit.export.route import SPEED_ROUND_S, SPEED_ROUNDS

    # two batch sizes: two warm-up calls of each runtime, then rounds of calls filling SPEED_ROUND_S
    per_round = round(SPEED_ROUND_S / 0.01) + round(SPEED_ROUND_S / 0.02)
    assert len(calls) == 2 * (2 * 2 + SPEED_ROUNDS * per_round)
    record = json.loads(graph_path(tiny_model).with_suffix(".speed.json").read_text())
    assert record["faster"] == {"1": "onnx", "8": "openvino"} and "threads" in record["machine"]

    used = []
    for name, part in (("onnxruntime", split.small), ("openvino", split.large)):
        run = part._infer
        part._infer = lambda arr, run=run, name=name: used.append((name, len(arr))) or run(arr)
    x = torch.randn(9, 3, 32, 32)
    with torch.no_grad():
        eager = tiny_model(x)
    torch.testing.assert_close(torch.cat([runner(x[:1]), runner(x[1:])]), eager, atol=1e-4, rtol=1e-4)
    assert used == [("onnxruntime", 1), ("openvino", 8)]
    twin = copy.deepcopy(split)  # a server's worker copy: both runtimes its own
    assert twin.small.session is not split.small.session and twin.large.session is not split.large.session
    torch.testing.assert_close(twin(x[1:]), eager[1:], atol=1e-4, rtol=1e-4)

    calls.clear()  # measured on this machine already: read back, not timed again
    assert isinstance(prepare(copy.deepcopy(tiny_model), "cpu", "fp32", engine="auto").module, ByBatch)
    assert calls == []
    fastest = {1: "openvino", 8: "openvino"}  # another machine, where one runtime wins both
    monkeypatch.setattr("vitkit.export.route._machine", lambda: "another CPU")
    again = prepare(copy.deepcopy(tiny_model), "cpu", "fp32", engine="auto").module
    assert calls and type(again) is OpenVINOViT


def test_auto_on_native_bf16_runs_the_graph_only_where_it_beats_pytorch_bf16(tiny_model, cache, monkeypatch):
    import json

    monkeypatch.setenv("VITKIT_NATIVE_BF16", "1")  # "auto" resolves to bf16, as on such a CPU
    seconds = {"torch": {1: 0.02, 8: 0.01}, "onnx": {1: 0.01, 8: 0.015}}
    calls = []

    def timed(module, x):  # injected timings, per runtime and batch size
        calls.append((module.engine, len(x)))
        return seconds[module.engine][len(x)] * len(x)

    monkeypatch.setattr("vitkit.export.route._time_call", timed)
    # onnxruntime 2x PyTorch bf16 at batch 1 and 0.67x at batch 8: 1.33x in all, so the graph runs
    runner = prepare(copy.deepcopy(tiny_model), "cpu", "auto", images=None)
    assert (runner.engine, runner.precision) == ("onnx", "fp32")
    assert {e for e, _ in calls} == {"onnx", "torch"}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), tiny_model(x), atol=1e-4, rtol=1e-4)
    path = graph_path(tiny_model)
    record = json.loads(path.with_name(f"{path.stem}.speed-bf16.json").read_text())
    assert record["faster"] == {"1": "onnx", "8": "torch"}
    calls.clear()  # read back on this machine, not timed again
    assert prepare(copy.deepcopy(tiny_model), "cpu", "auto", images=None).engine == "onnx" and calls == []

    # another machine, where PyTorch bf16 is faster in all (1.2x slower at batch 1, 3x faster at 8)
    seconds["torch"] = {1: 0.012, 8: 0.005}
    monkeypatch.setattr("vitkit.export.route._machine", lambda: "another CPU")
    runner = prepare(copy.deepcopy(tiny_model), "cpu", "auto", images=None)
    assert (runner.engine, runner.precision) == ("torch", "bf16") and calls

    # a precision or engine asked for is kept, and nothing is timed for it
    calls.clear()
    assert prepare(copy.deepcopy(tiny_model), "cpu", "bf16", images=None).engine == "torch"
    assert prepare(copy.deepcopy(tiny_model), "cpu", "auto", engine="torch").engine == "torch"
    assert calls == []


# OpenVINO in bf16, in a process of its own (one OpenVINO precision per process): its logits
# near eager fp32, the precision it computes in reported, and f32 no longer compiled by "auto".
OV_BF16_CASE = """
import sys
import numpy as np
import openvino as ov
import torch
from vitkit.formats.openvino import OpenVINOViT, compile_file, may_compile
from vitkit.formats.exported import open_onnx
opened = open_onnx(sys.argv[1])
compiled = compile_file(sys.argv[1], 1, None, "bf16")
model = OpenVINOViT(compiled, opened.model.config, {}, opened.model.path, 1, None, "bf16")
x = torch.from_numpy(np.load(sys.argv[2], allow_pickle=False))
got = model(x).numpy()
np.save(sys.argv[3], got, allow_pickle=False)
has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
print("precision", model.precision, "expected", "bf16" if has_bf16 else "fp32")
print("copy", type(model).__deepcopy__(model, {}).precision)
print("may compile", may_compile("bf16"), may_compile("fp32"))
"""


@pytest.mark.openvino
def test_openvino_bf16_gives_near_fp32_logits_and_keeps_the_process_to_one_precision(tmp_path, tiny_model):
    pytest.importorskip("openvino")
    import subprocess
    import sys

    import numpy as np

    from vitkit.export import export_model

    path, _ = export_model(tiny_model, CLASSES, SPEC, tmp_path / "m.onnx")
    x = torch.randn(4, 3, 32, 32)
    np.save(tmp_path / "x.npy", x.numpy(), allow_pickle=False)
    out = subprocess.run([sys.executable, "-c", OV_BF16_CASE, str(path), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    reported, expected = lines["precision"].split(" expected ")
    assert reported == expected and lines["copy"] == reported
    assert lines["may"] == "compile True False"
    with torch.no_grad():
        eager = tiny_model(x)
    got = torch.from_numpy(np.load(tmp_path / "y.npy", allow_pickle=False))
    torch.testing.assert_close(got, eager, atol=5e-2, rtol=5e-2)
