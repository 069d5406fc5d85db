"""The training loop: it learns, it resumes exactly, it fails cleanly and never loses a checkpoint."""

import json
import math

import pytest
import torch
from helpers import interrupt_at, tiny_train_config
from safetensors.torch import load_file

from vitkit.training import fit
from vitkit.training.schedule import lr_factor
from vitkit.training.stop import NonFiniteLoss


def test_digits_run_learns_and_writes_its_files(tmp_path):
    out = tmp_path / "run"
    r = fit(tiny_train_config(out, epochs=4))
    assert r.status == "finished" and r.epoch == 4
    assert r.val_acc > 0.5  # chance is 0.1
    for name in ("config.json", "train.yaml", "model.safetensors", "state.pt", "metrics.csv", "curves.png"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "config.json").read_text())
    assert meta["classes"] == [str(i) for i in range(10)] and meta["train"]["run"]["epochs"] == 4
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,step,train_loss") and len(rows) == 5
    assert not list(out.glob(".*.tmp"))
    # the weights alone load without the rest
    from vitkit import ViT
    model = ViT.from_pretrained(out)
    assert model.config.num_classes == 10


def test_refuses_to_overwrite_a_run(tmp_path):
    fit(tiny_train_config(tmp_path / "r", epochs=1))
    with pytest.raises(ValueError, match="already holds a run: continue it with vitkit train --resume"):
        fit(tiny_train_config(tmp_path / "r", epochs=1))



def test_interrupt_mid_epoch_then_resume_is_exact(tmp_path):
    sections = dict(model={"dropout": 0.1, "drop_path": 0.1}, augment={"crop": "pad", "flip": True},
                    optim={"ema": 0.9})
    full = fit(tiny_train_config(tmp_path / "full", epochs=3, **sections))
    steps_per_epoch = 1437 // 64
    cut = fit(tiny_train_config(tmp_path / "cut", epochs=3, **sections),
              on_step=interrupt_at(steps_per_epoch + 5))
    assert cut.status == "interrupted" and cut.step == steps_per_epoch + 5
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["batch_in_epoch"] == 5
    resumed = fit(None, resume=tmp_path / "cut")
    assert resumed.status == "finished" and resumed.step == full.step
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = torch.load(tmp_path / "full" / "state.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_progressive_resizing_trains_small_first_and_resumes_exactly(tmp_path):
    sections = dict(augment={"crop": "pad", "flip": True, "progressive": 0.5, "progressive_scale": 0.5})
    sizes = []

    def record(trainer):  # the inputs of every later training step, through a hook set at the first
        if trainer.state.step == 1:
            trainer.model.register_forward_pre_hook(
                lambda m, a: sizes.append(tuple(a[0].shape[-2:])) if m.training else None)

    full = fit(tiny_train_config(tmp_path / "full", epochs=3, **sections), on_step=record)
    steps_per_epoch = 1437 // 64
    assert sizes[0] == (4, 4) and sizes[-1] == (8, 8)  # digits 8x8, patch 2: from half the side to all
    assert set(sizes) == {(4, 4), (6, 6), (8, 8)}
    first_full = sizes.index((8, 8)) + 2  # the step number: the hook records from the second step
    assert first_full == math.floor(3 * steps_per_epoch * 0.5) + 1  # full once half the steps are done
    cut = fit(tiny_train_config(tmp_path / "cut", epochs=3, **sections),
              on_step=interrupt_at(steps_per_epoch + 3))
    assert cut.status == "interrupted"
    assert fit(None, resume=tmp_path / "cut").step == full.step
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    out = tmp_path / "nan"

    def poison(trainer):
        if trainer.state.epoch == 1 and trainer.state.batch_in_epoch == 3:
            with torch.no_grad():
                trainer.model.head.weight.fill_(float("nan"))

    before = None
    with pytest.raises(NonFiniteLoss, match="loss became nan at step .* last good checkpoint"):
        def hook(trainer):
            nonlocal before
            if trainer.state.epoch == 1 and before is None:
                before = (out / "model.safetensors").read_bytes()
            poison(trainer)
        fit(tiny_train_config(out, epochs=3, run={"log_every": 1}), on_step=hook)
    assert (out / "model.safetensors").read_bytes() == before
    w = load_file(str(out / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in w.values())


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """The disk fills up half-way through the second epoch's save: the first epoch's
    checkpoint stays whole and no temporary file is left behind."""
    import vitkit.files as files
    import vitkit.training.trainer as tr

    out = tmp_path / "r"
    before = {}

    def failing_save_tensors(path, tensors):
        def half(f):
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        return files.atomic_write(path, half)

    def hook(trainer):
        if trainer.state.epoch == 1 and not before:
            before.update({p.name: p.read_bytes() for p in out.iterdir() if p.is_file()})
            monkeypatch.setattr(tr, "atomic_save_tensors", failing_save_tensors)

    with pytest.raises(OSError, match="No space left"):
        fit(tiny_train_config(out, epochs=2), on_step=hook)
    assert "model.safetensors" in before and "state.pt" in before
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for name in ("model.safetensors", "state.pt"):
        assert after[name] == before[name], name
    assert not list(out.glob(".*.tmp"))
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["epoch"] == 1


def test_unwritable_run_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot write to run directory .*file/run"):
        fit(tiny_train_config(blocker / "run", epochs=1))


def test_model_that_does_not_fit_the_data(tmp_path):
    from vitkit import ViT, ViTConfig
    wrong = ViT(ViTConfig(image_size=8, patch_size=2, num_channels=3, hidden_size=32, num_layers=1,
                          num_heads=2, mlp_size=64, num_classes=7))
    with pytest.raises(ValueError, match="model has 7 classes, data has 10.*model takes 3 channels"):
        fit(tiny_train_config(tmp_path / "r", epochs=1), model=wrong)


def test_schedule_warmup_then_cosine():
    assert lr_factor(0.0, 0.1, "cosine", 0.0) == pytest.approx(1e-3)
    assert lr_factor(0.05, 0.1, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(0.55, 0.1, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(1.0, 0.1, "linear", 0.1) == pytest.approx(0.1)


def test_default_epochs_shorten_for_large_sets_without_a_time_budget(tmp_path, monkeypatch):
    from vitkit.training import batches
    from vitkit.training.trainer import Trainer

    assert batches.default_epochs(None, 1437, None) == (60, None)  # digits, photo folders: 60
    epochs, note = batches.default_epochs(None, 8000, None)
    assert epochs == 30 and note.startswith("30 epochs: the default for 8,000 training images")
    assert batches.default_epochs(None, 10**6, None)[0] == batches.MIN_DEFAULT_EPOCHS
    assert batches.default_epochs(None, 8000, 5.0) == (60, None)  # a budget decides the length
    assert batches.default_epochs(7, 8000, None) == (7, None)  # as asked
    # a planned run of a set whose default budget grows with it fills that budget (at most 60)
    epochs, note = batches.default_epochs(None, 50_000, None, planned=True)
    assert epochs == 60 and note.startswith("50,000 training images: as many epochs as the default budget")
    assert batches.default_epochs(None, 8000, None, planned=True)[0] == 30  # the rule up to BUDGET_IMAGES
    assert batches.default_epochs(None, 50_000, None)[0] == 10  # not planned: the rule
    monkeypatch.setattr(batches, "DEFAULT_IMAGES", 1437 * 12)  # digits' training split as "large"
    cfg = tiny_train_config(tmp_path / "r")
    cfg.run.epochs = None
    trainer = Trainer(cfg)
    assert trainer.epochs == 12 and trainer.total_steps == 12 * trainer.steps_per_epoch
