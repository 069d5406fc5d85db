"""Fine-tuning that fits a CPU: a linear probe on features computed once (one backbone pass per
batch and view), and LoRA adapters through peft, published merged into plain weights that
every command opens as any other vitkit model."""

import json

import numpy as np
import pytest
import torch
from conftest import randomize_
from helpers import interrupt_at, tiny_train_config
from PIL import Image
from safetensors.torch import load_file

import vitkit
from vitkit.cli import main
from vitkit.config import ViTConfig
from vitkit.data.augment import AugmentConfig
from vitkit.data.pipeline import DataConfig
from vitkit.evaluation import evaluate_model
from vitkit.finetune import LinearOptions, LoraOptions, finetune
from vitkit.finetune.lora import LoraViT, trainable_parameters
from vitkit.model import ViT
from vitkit.plan import load_data
from vitkit.training import OptimConfig, RunConfig, fit

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny digits model after two epochs (well short of what it can reach)."""
    out = tmp_path_factory.mktemp("pre") / "run"
    fit(tiny_train_config(out, epochs=2))
    return out


def run_config(out, epochs=1, batch_size=64):
    return RunConfig(out=str(out), epochs=epochs, batch_size=batch_size, progress=False, precision="fp32")


def test_linear_computes_features_once(pretrained, tmp_path, monkeypatch, capsys):
    calls = []
    embed = ViT.embed
    monkeypatch.setattr(ViT, "embed", lambda self, x: calls.append(len(x)) or embed(self, x))
    views, bs = 2, 64
    res = finetune(pretrained, DataConfig(dataset="digits"), run=run_config(tmp_path / "lin", batch_size=bs),
                   mode="linear", views=views, linear=LinearOptions(epochs=100))
    monkeypatch.setattr(ViT, "embed", embed)
    data = load_data(DataConfig(dataset="digits"))
    n_train, n_val = len(data.train), len(data.val)
    assert len(calls) == -(-n_train // bs) * views + -(-n_val // 500)  # 500: the evaluation batch
    assert sum(calls) == n_train * views + n_val
    assert "features: 2,874 training (2 views), 360 validation" in capsys.readouterr().out
    assert res.val_acc > 0.3, res.val_acc  # chance: 10%

    # a plain model folder: the source backbone, the trained head; evaluate gives the same accuracy
    before = load_file(pretrained / "model.safetensors")
    after = load_file(tmp_path / "lin" / "model.safetensors")
    assert after.keys() == before.keys()
    for k in before:
        if not k.startswith("head."):
            assert torch.equal(before[k], after[k]), k
    opened = vitkit.open_model(tmp_path / "lin")
    ev = evaluate_model(opened.model, data.val, opened.spec, opened.classes)
    assert ev.top1 == pytest.approx(res.val_acc, abs=1.5 / n_val)
    meta = json.loads((tmp_path / "lin" / "config.json").read_text())
    assert meta["finetune"]["mode"] == "linear" and meta["finetune"]["views"] == 2
    rows = (tmp_path / "lin" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 101


def test_linear_mode_refuses_progressive_resizing(pretrained, tmp_path):
    with pytest.raises(ValueError, match=r"^--augment.progressive: the linear mode caches features"):
        finetune(pretrained, DataConfig(dataset="digits", per_class=5), run=run_config(tmp_path / "lp"),
                 mode="linear", augment=AugmentConfig(progressive=0.5))
    assert not (tmp_path / "lp").exists()


def test_linear_probe_flag_is_linear_mode(pretrained, tmp_path):
    finetune(pretrained, DataConfig(dataset="digits", per_class=5), run=run_config(tmp_path / "lp"),
             linear_probe=True, linear=LinearOptions(epochs=5))
    meta = json.loads((tmp_path / "lp" / "config.json").read_text())
    assert meta["finetune"] == {"mode": "linear", "views": 1, "linear": {
        "epochs": 5, "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 256}}


def adapted(cfg: ViTConfig, rank=4, seed=0) -> LoraViT:
    """A random ViT with LoRA adapters whose updates are not zero."""
    model = LoraViT(randomize_(ViT(cfg), seed), LoraOptions(rank=rank, alpha=8))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_lora_trains_adapters_and_head_only():
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=3, mlp_size=96,
                    num_classes=5)
    model = adapted(cfg)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n or n.startswith("lora.model.head.")
                         for n in names)
    d, m, r = 48, 96, 4  # per block: qkv r(D + 3D), proj r(2D), fc1 r(D + M), fc2 r(M + D)
    per_block = r * (4 * d + 2 * d + 2 * (d + m))
    assert trainable_parameters(model)[0] == 2 * per_block + d * 5 + 5
    with pytest.raises(ValueError, match="--lora.targets attn: must be some of qkv, proj, fc1, fc2"):
        LoraViT(ViT(cfg), LoraOptions(targets=["attn"]))


def test_merged_equals_adapted():
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=3, mlp_size=96,
                    num_classes=5)
    model = adapted(cfg)
    merged = model.merged().eval()
    assert type(merged) is ViT and not any("lora" in k for k in merged.state_dict())
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = model(x), merged(x)  # the merged model takes the class-token fast path
        plain = randomize_(ViT(cfg), 0)(x)
    assert (a - plain).abs().max() > 0.05  # the adapters change the logits
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_lora_run_opens_predicts_and_exports(pretrained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "lora"
    res = finetune(pretrained, DataConfig(dataset="digits", per_class=30), run=run_config(out, epochs=2),
                   mode="lora", optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=0.0),
                   lora=LoraOptions(rank=4, alpha=8))
    assert "LoRA rank 4:" in capsys.readouterr().out
    # the run's adapted model (state.pt) and its published, merged weights compute the same logits
    state = torch.load(out / "state.pt", weights_only=True)["model"]
    opened = vitkit.open_model(out)
    live = LoraViT(ViT(opened.model.config), LoraOptions(rank=4, alpha=8))
    live.load_state_dict(state)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(opened.model(x), live.eval()(x), rtol=0, atol=1e-5)
    qkv = load_file(pretrained / "model.safetensors")["blocks.0.attn.qkv.weight"]
    assert torch.equal(state["lora.model.blocks.0.attn.qkv.base_layer.weight"], qkv)  # frozen
    assert not torch.equal(opened.model.state_dict()["blocks.0.attn.qkv.weight"], qkv)  # merged
    data = load_data(DataConfig(dataset="digits"))
    assert evaluate_model(opened.model, data.val, opened.spec, opened.classes).top1 == pytest.approx(
        res.val_acc, abs=1.5 / len(data.val))

    img = tmp_path / "digit.png"
    Image.fromarray(np.asarray(data.val.images[0, 0])).save(img)
    main(["predict", str(out), str(img), "--topk", "1"])
    assert capsys.readouterr().out.startswith(f"{img}: ")
    from vitkit.export import export_file

    done = export_file(out, tmp_path / "lora.onnx")
    assert done.check.max_abs_diff < 1e-4 and done.check.top1_agreement == 1.0



@pytest.mark.parametrize("mode", ["lora", "full"])
def test_interrupted_finetuning_resumes_exactly(mode, pretrained, tmp_path, monkeypatch, capsys):
    # "auto" precision: the resumed run must train as the source model (0.3 MMACs: fp32 here),
    # not as the default --model section it never used (3.1 MMACs: bf16 here)
    monkeypatch.setattr("vitkit.precision.BF16_TRAINING_MIN_MACS", {"amx": 1e6, "avx512": 1e6})
    monkeypatch.setenv("VITKIT_NATIVE_BF16", "1")

    def run(name, on_step=None):
        return finetune(pretrained, DataConfig(dataset="digits", per_class=30),
                        augment=AugmentConfig(crop="pad", flip=True), mode=mode,
                        run=RunConfig(out=str(tmp_path / name), epochs=3, batch_size=64, progress=False),
                        optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=0.0, ema=0.9),
                        lora=LoraOptions(rank=4, alpha=8, dropout=0.1), on_step=on_step)

    full = run("full")
    cut = run("cut", on_step=interrupt_at(6))  # 4 steps per epoch: within the second
    assert cut.status == "interrupted" and cut.step == 6
    capsys.readouterr()
    main(["train", "--resume", str(tmp_path / "cut")])  # what the interrupted command prints
    out = capsys.readouterr().out
    assert "resuming" in out and "cpu, fp32" in out and ("LoRA rank 4:" in out) == (mode == "lora")
    a = torch.load(tmp_path / "full" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    assert b["step"] == a["step"] == full.step
    assert any(".lora_A." in k for k in a["model"]) == (mode == "lora")  # LoRA: the adapters resume
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    wa = load_file(tmp_path / "full" / "model.safetensors")
    wb = load_file(tmp_path / "cut" / "model.safetensors")
    assert wa.keys() == wb.keys() and not any("lora" in k for k in wb)  # published merged
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((tmp_path / n / "config.json").read_text()) for n in ("full", "cut"))
    assert mb["finetune"] == ma["finetune"] and mb["finetuned_from"] == ma["finetuned_from"]
    assert type(vitkit.open_model(tmp_path / "cut").model) is ViT

    if mode == "full":
        return
    mb["finetune"]["lora"]["bogus"] = 1
    (tmp_path / "cut" / "config.json").write_text(json.dumps(mb))
    with pytest.raises(ValueError, match=r"config.json: bad 'finetune.lora' entry \("):
        fit(None, resume=tmp_path / "cut")
