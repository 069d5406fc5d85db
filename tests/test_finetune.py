"""Fine-tuning a digits model to a new resolution and head: it improves over its start and,
on a small subset, beats the same model trained from scratch."""

import json

import torch
from helpers import tiny_train_config
from safetensors.torch import load_file

from vitkit.data.pipeline import DataConfig
from vitkit.finetune import LinearOptions, finetune
from vitkit.training import OptimConfig, RunConfig, fit


def test_finetune_new_resolution_beats_scratch(tmp_path, capsys):
    pre = fit(tiny_train_config(tmp_path / "pre", epochs=12))
    assert pre.val_acc > 0.8
    small = DataConfig(dataset="digits", image_size=16, per_class=8)
    run = RunConfig(out=str(tmp_path / "ft"), epochs=15, batch_size=16, progress=False, precision="fp32")
    ft = finetune(tmp_path / "pre", small, optim=OptimConfig(name="sgd", lr=0.03, weight_decay=0.0,
                                                             warmup=0.1), run=run)
    out = capsys.readouterr().out
    assert "8x8 -> 16x16" in out and "new zero-initialized head" in out
    meta = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert meta["model"]["image_size"] == [16, 16] and meta["finetuned_from"].endswith("pre")
    assert meta["data"]["mean"] == json.loads((tmp_path / "pre" / "config.json").read_text())["data"]["mean"]
    # its start is a zero head: chance (10%); it must improve well beyond that
    assert ft.metrics[0]["val_acc"] < ft.val_acc and ft.val_acc > 0.6
    scratch_cfg = tiny_train_config(tmp_path / "scratch", epochs=15)
    scratch_cfg.data = small
    scratch_cfg.run.batch_size = 16
    scratch = fit(scratch_cfg)
    assert ft.val_acc > scratch.val_acc + 0.1, (ft.val_acc, scratch.val_acc)


def test_linear_probe_trains_only_the_head(tmp_path):
    fit(tiny_train_config(tmp_path / "pre", epochs=1))
    before = load_file(tmp_path / "pre" / "model.safetensors")
    run = RunConfig(out=str(tmp_path / "lp"), epochs=1, batch_size=64, progress=False, precision="fp32")
    finetune(tmp_path / "pre", DataConfig(dataset="digits"), run=run, linear_probe=True,
             linear=LinearOptions(epochs=20))
    after = load_file(tmp_path / "lp" / "model.safetensors")
    for k in before:
        if not k.startswith("head."):
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(after["head.weight"], torch.zeros_like(after["head.weight"]))
