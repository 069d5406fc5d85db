"""vitkit distill: the losses by hand, the distillation token against timm's distilled DeiT, the
teacher's forwards counted, exact resume, and the student through predict, export and serve."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from helpers import interrupt_at, tiny_train_config
from PIL import Image
from safetensors.torch import load_file

import vitkit
from vitkit.cli import main
from vitkit.config import ViTConfig
from vitkit.data.augment import AugmentConfig
from vitkit.data.pipeline import DataConfig
from vitkit.distill import DistillOptions, distill
from vitkit.distill.losses import hard_distillation, soft_distillation
from vitkit.distill.objective import TokenStudent
from vitkit.model import ViT
from vitkit.training import ModelSpec, RunConfig, fit

STUDENT = ModelSpec(patch_size=2, hidden_size=16, num_layers=1, num_heads=2, mlp_size=32, stem="patch")
DATA = DataConfig(dataset="digits", per_class=20)  # for refusals before anything is computed
AUGMENT = AugmentConfig(crop="pad", flip=True)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    fit(tiny_train_config(out, epochs=2))
    return out


def run(teacher, out, loss="hard", epochs=2, views=3, seed=0, **kw):
    data = DataConfig(dataset="digits", per_class=20, cache_dir=str(out.parent / "cache"))
    return distill(teacher, data, STUDENT, DistillOptions(loss=loss, views=views), augment=AUGMENT,
                   run=RunConfig(out=str(out), epochs=epochs, batch_size=50, progress=False,
                                 precision="fp32", seed=seed), **kw)


# ---- losses ----------------------------------------------------------------------------------

def _softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def test_soft_loss_equals_the_formula_by_hand():
    s, t, y = [1.0, 2.0, 0.5], [0.2, 3.0, -1.0], 2
    alpha, tau = 0.3, 2.0
    ce = -math.log(_softmax(s)[y])
    ps, pt = _softmax([v / tau for v in s]), _softmax([v / tau for v in t])
    kl = sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=True))
    want = (1 - alpha) * ce + alpha * tau * tau * kl
    got = soft_distillation(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), alpha, tau)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_hard_loss_equals_the_formula_by_hand():
    s, d, t, y = [1.0, 2.0, 0.5], [0.0, -1.0, 1.5], [0.2, 3.0, -1.0], 2  # the teacher says class 1
    want = 0.5 * -math.log(_softmax(s)[y]) + 0.5 * -math.log(_softmax(s)[1])
    assert hard_distillation(torch.tensor([s]), torch.tensor([t]), torch.tensor([y])).item() == \
        pytest.approx(want, rel=1e-6)
    want = 0.5 * -math.log(_softmax(s)[y]) + 0.5 * -math.log(_softmax(d)[1])  # token: the second head
    got = hard_distillation(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]),
                            student_dist=torch.tensor([d]))
    assert got.item() == pytest.approx(want, rel=1e-6)
    mixed = torch.tensor([[0.25, 0.0, 0.75]])  # MixUp targets: probabilities
    want = 0.5 * -(0.25 * math.log(_softmax(s)[0]) + 0.75 * math.log(_softmax(s)[2])) + \
        0.5 * -math.log(_softmax(s)[1])
    got = hard_distillation(torch.tensor([s]), torch.tensor([t]), mixed)
    assert got.item() == pytest.approx(want, rel=1e-6)


# ---- the distillation token ----------------------------------------------------------------

def test_token_model_answers_with_the_average_of_its_two_heads():
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64,
                          num_classes=5, distill_token=True))
    for head in model.heads():
        torch.nn.init.normal_(head.weight)
    x = torch.randn(3, 3, 16, 16)
    student = TokenStudent(model).train()
    cls, dist = student(x)
    assert not torch.allclose(cls, dist)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), (cls + dist) / 2, atol=1e-5)  # the fast path too
        assert torch.allclose(student.eval()(x), (cls + dist) / 2, atol=1e-5)
    assert model.config.num_prefix_tokens == 2


def test_distilled_deit_of_timm_opens_with_the_same_logits(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    ref = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32,
                            num_classes=4).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_file(ref.state_dict(), tmp_path / "deit.safetensors")
    opened = vitkit.open_model(tmp_path / "deit.safetensors")
    assert opened.model.config.distill_token
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(opened.model(x), ref(x), atol=1e-5)  # timm: (head + head_dist) / 2 in eval


# ---- the run ----------------------------------------------------------------------------------

def test_teacher_runs_once_per_view_and_its_views_are_kept(teacher, tmp_path, monkeypatch, capsys):
    import vitkit.distill as d

    seen = []
    real = d.prepare

    class Counted:
        def __init__(self, runner):
            self.runner, self.engine, self.precision = runner, runner.engine, runner.precision

        def __call__(self, x):
            seen.append(len(x))
            return self.runner(x)

    def counting(model, *a, **kw):
        return Counted(real(model, *a, **kw))

    monkeypatch.setattr(d, "prepare", counting)
    counts = []
    for epochs, seed in ((1, 0), (3, 0), (1, 1)):
        seen.clear()
        res = run(teacher, tmp_path / f"e{epochs}s{seed}", epochs=epochs, views=3, seed=seed)
        counts.append(sum(seen))
        assert res.epoch == epochs
    n_train = res.train_images // 3  # the views are the training set
    # the second run reads the first one's views from the cache; another seed makes new ones
    assert counts == [3 * n_train, 0, 3 * n_train]
    assert "teacher's views read from" in capsys.readouterr().out
    cached = list((tmp_path / "cache" / "distill").glob("*.safetensors"))
    assert len(cached) == 2
    cached[0].write_bytes(b"damaged")
    seen.clear()
    with pytest.warns(UserWarning, match="unreadable views cache, ignored and rebuilt"):
        run(teacher, tmp_path / "again", epochs=1, views=3, seed=0)
        run(teacher, tmp_path / "again1", epochs=1, views=3, seed=1)
    assert sum(seen) == 3 * n_train  # the damaged one computed again, the other read
    meta = json.loads((tmp_path / "e3s0" / "config.json").read_text())
    assert meta["distill"]["views"] == 3 and meta["distill"]["loss"] == "hard"
    assert 0.5 < meta["distill"]["teacher_agreement"] <= 1.0



@pytest.mark.parametrize("loss", ["token", "soft"])
def test_interrupted_distillation_resumes_exactly(teacher, loss, tmp_path, capsys):
    full = run(teacher, tmp_path / "full", loss=loss, epochs=3)
    cut = run(teacher, tmp_path / "cut", loss=loss, epochs=3, on_step=interrupt_at(4))
    assert cut.status == "interrupted" and cut.step == 4
    capsys.readouterr()
    main(["train", "--resume", str(tmp_path / "cut")])  # what the interrupted command says to run
    assert "resuming" in capsys.readouterr().out
    a = torch.load(tmp_path / "full" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    assert a["step"] == b["step"] == full.step
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    wa, wb = (load_file(tmp_path / n / "model.safetensors") for n in ("full", "cut"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ("head_dist.weight" in wa) == (loss == "token") and not any(k.startswith("model.") for k in wa)


def test_token_student_opens_in_predict_export_and_serve(teacher, tmp_path, capsys):
    res = run(teacher, tmp_path / "s", loss="token")
    opened = vitkit.open_model(res.run_dir)
    assert type(opened.model) is ViT and opened.model.config.distill_token
    img = tmp_path / "digit.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(img)
    capsys.readouterr()
    main(["predict", str(res.run_dir), str(img), "--topk", "1", "--json", "true"])
    out = json.loads(capsys.readouterr().out)
    assert out[0]["top"][0]["class"] in opened.classes
    from vitkit.export import export_file

    done = export_file(res.run_dir, tmp_path / "s.onnx")
    assert done.check.max_abs_diff < 1e-4 and done.check.top1_agreement == 1.0
    int8 = export_file(res.run_dir, tmp_path / "s8.onnx", int8=True)
    assert int8.path.is_file() and int8.check.max_abs_diff < 0.25  # random inputs: logits close, top-1 not
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vitkit.serve import ServeOptions, create_app

    buf = io.BytesIO()
    Image.open(img).save(buf, "PNG")
    with TestClient(create_app(vitkit.open_model(tmp_path / "s.onnx"), ServeOptions())) as client:
        r = client.post("/v1/predict", content=buf.getvalue(), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.json()["top"][0]["class"] in opened.classes


# ---- refusals ---------------------------------------------------------------------------------

def test_a_teacher_of_other_classes_is_one_line(tmp_path):
    other = tmp_path / "other"
    ViT(ViTConfig(image_size=8, patch_size=2, hidden_size=16, num_layers=1, num_heads=2, mlp_size=32,
                  num_channels=1, num_classes=3)).save_pretrained(other, classes=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"the teacher has 3 classes, the data 10 \(the teacher lacks 0, 1, "
                                         r".*vitkit finetune"):
        run(str(other), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_teacher_that_cannot_be_opened_is_one_line(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a model")
    with pytest.raises(SystemExit):
        main(["distill", str(bad), "--data.dataset", "digits", "--run.out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.txt" in err[0]
    with pytest.raises(SystemExit):
        main(["distill", str(tmp_path / "nothing-here"), "--run.out", str(tmp_path / "out")])
    assert "nothing-here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_student_larger_than_its_teacher_is_warned_about(teacher, tmp_path):
    big = ModelSpec(patch_size=2, hidden_size=64, num_layers=3, num_heads=2, mlp_size=128, stem="patch")
    with pytest.warns(UserWarning, match="as large as or larger than the teacher"):
        distill(teacher, DataConfig(dataset="digits", per_class=20, cache_dir=str(tmp_path / "c")), big,
                DistillOptions(views=1), augment=AUGMENT,
                run=RunConfig(out=str(tmp_path / "big"), epochs=1, progress=False, precision="fp32"))


def test_bad_options_are_one_line(teacher, tmp_path):
    with pytest.raises(ValueError, match=r"--distill.tau 0"):
        distill(teacher, DATA, STUDENT, DistillOptions(tau=0))
    with pytest.raises(ValueError, match=r"^distillation: --augment.progressive is not supported"):
        distill(teacher, DATA, STUDENT, DistillOptions(), augment=AugmentConfig(progressive=0.5))
    with pytest.raises(ValueError, match=r"--distill.loss token needs --model.distill_token true"):
        distill(teacher, DATA, ModelSpec(distill_token=False), DistillOptions(loss="token"))


def test_the_command_distills_and_says_what_to_run_next(teacher, tmp_path, capsys):
    main(["distill", str(teacher), "--data.dataset", "digits", "--data.per_class", "10",
          "--model.hidden_size", "16", "--model.num_layers", "1", "--model.num_heads", "2",
          "--model.mlp_size", "32", "--distill.loss", "soft", "--run.epochs", "1", "--run.progress", "false",
          "--data.cache_dir", str(tmp_path / "cache"), "--run.out", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert "teacher agrees with the labels on" in out and "final test-split accuracy" in out
    assert "vitkit evaluate" in out
    assert vitkit.open_model(tmp_path / "cli").model.config.hidden_size == 16


# ---- a student cut from the teacher ----------------------------------------------------------

def test_a_student_cut_from_the_teacher_keeps_its_first_layers_at_the_new_size():
    from vitkit.distill.student import cut_from_teacher
    from vitkit.posemb import resample_pos_embed

    torch.manual_seed(0)
    t = ViT(ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_layers=3, num_heads=2, mlp_size=32,
                      num_classes=3)).eval()
    x16, x8 = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)
    whole = cut_from_teacher(t, 3, 16, [2, 0, 1]).eval()  # every layer, same size: the teacher reordered
    with torch.no_grad():
        assert torch.allclose(whole(x16), t(x16)[:, [2, 0, 1]], atol=1e-6)
    s = cut_from_teacher(t, 1, 8, [0, 1, 2]).eval()
    assert s.config.num_layers == 1 and s.config.image_size == (8, 8) and len(s.blocks) == 1
    with torch.no_grad():  # the teacher's own modules by hand: embed, first block, norm, head
        pos = resample_pos_embed(t.pos_embed, (2, 2), (4, 4), 1)
        z = torch.cat([t.cls_token.expand(2, -1, -1), t.patch_embed(x8)], 1) + pos
        want = t.head(t.norm(t.blocks[0](z)[0])[:, 0])
        assert torch.allclose(s(x8), want, atol=1e-5)
    with pytest.raises(ValueError, match=r"--model.num_layers 4: .* keeps 1 to 3"):
        cut_from_teacher(t, 4, 8, [0, 1, 2])
    with pytest.raises(ValueError, match=r"--data.image_size \[10, 10\]"):
        cut_from_teacher(t, 1, 10, [0, 1, 2])


def cut_run(teacher, out, **kw):
    data = DataConfig(dataset="digits", per_class=20, cache_dir=str(out.parent / "cache"))
    return distill(teacher, data, kw.pop("model", None), DistillOptions(loss="soft", views=2, init="teacher"),
                   augment=AUGMENT, run=RunConfig(out=str(out), epochs=3, batch_size=50, progress=False,
                                                  precision="fp32"), **kw)


def test_a_student_cut_from_the_teacher_trains_publishes_and_resumes_exactly(teacher, tmp_path, capsys):
    from vitkit.distill import lessons
    from vitkit.training import TrainConfig

    data = DataConfig(dataset="digits", per_class=20, cache_dir=str(tmp_path / "cache"))
    taught = lessons(teacher, TrainConfig(data=data, model=ModelSpec(), augment=AUGMENT,
                                          run=RunConfig(out=str(tmp_path / "l"), precision="fp32")),
                     DistillOptions(views=2, init="teacher"))
    t = vitkit.open_model(teacher).model
    s = taught.student  # half the layers at half the side, its first block the teacher's
    assert s.config.num_layers == 1 and s.config.image_size == (4, 4)
    assert taught.data.spec.image_size == (4, 4)
    assert all(torch.equal(a, b) for a, b in zip(s.blocks[0].state_dict().values(),
                                                 t.blocks[0].state_dict().values(), strict=True))
    full = cut_run(teacher, tmp_path / "full")
    cut = cut_run(teacher, tmp_path / "cut", on_step=interrupt_at(2))
    assert cut.status == "interrupted"
    capsys.readouterr()
    main(["train", "--resume", str(tmp_path / "cut")])
    wa, wb = (load_file(tmp_path / n / "model.safetensors") for n in ("full", "cut"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    meta = json.loads((tmp_path / "full" / "config.json").read_text())
    opened = vitkit.open_model(full.run_dir)
    assert opened.model.config.num_layers == 1 and opened.spec.image_size == (4, 4)
    assert meta["distill"]["init"] == "teacher" and meta["train"]["optim"]["lr"] == 1e-4  # a fine-tuning rate


def test_a_student_cut_from_the_teacher_refuses_what_it_cannot_be(teacher, tmp_path):
    with pytest.raises(ValueError, match=r"^--distill.init teacher: .*only --model.num_layers .*hidden_size"):
        cut_run(teacher, tmp_path / "a", model=ModelSpec(hidden_size=8))
    with pytest.raises(ValueError, match=r"^--distill.loss token needs a new student"):
        distill(teacher, DATA, None, DistillOptions(loss="token", init="teacher"),
                run=RunConfig(out=str(tmp_path)))
    with pytest.raises(ValueError, match=r"^--distill.init 'x'"):
        DistillOptions(init="x").validate()
