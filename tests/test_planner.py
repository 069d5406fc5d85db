"""The run planned against the clock: the choice from measured step times (injected here, so
it is deterministic), the budget rule, what the run records, and a planned run that ends in time."""

from __future__ import annotations

import json
import time

import pytest
from helpers import tiny_train_config

from vitkit.training import fit
from vitkit.training.planner import SAFETY, default_budget, plan_length
from vitkit.training.trainer import Trainer


def test_the_faster_precision_and_the_most_epochs_that_fit():
    steps, evals = {"fp32": 0.1, "bf16": 0.05}, {"fp32": 0.001, "bf16": 0.0005}
    plan = plan_length(steps, evals, steps_per_epoch=100, eval_images=1000, max_epochs=60, budget_min=5.0)
    eval_epoch = 1000 * 0.0005
    per_epoch = 100 * 0.05 + eval_epoch
    assert plan.precision == "bf16" and plan.eval_s == 0.0005
    assert plan.epochs == int((5 * 60 * SAFETY - eval_epoch) // per_epoch) == 49
    assert plan.expected_s <= 5 * 60
    assert plan == plan_length(dict(steps), dict(evals), 100, 1000, 60, 5.0)  # deterministic


def test_the_rule_caps_the_plan_and_a_tight_budget_still_trains():
    evals = {"fp32": 0.0, "bf16": 0.0}
    fast = plan_length({"fp32": 0.001}, evals, 100, 1000, max_epochs=60, budget_min=5.0)
    assert fast.epochs == 60 and "of 60" not in fast.line("x")
    slow = plan_length({"fp32": 10.0}, evals, 100, 1000, max_epochs=60, budget_min=5.0)
    assert slow.epochs == 1 and "1 epochs (of 60: the budget)" in slow.line("x")
    spent = plan_length({"fp32": 0.05}, evals, 100, 0, 60, 5.0, spent_s=100.0)
    assert spent.epochs == int((5 * 60 * SAFETY - 100) // 5)  # time already spent is not planned again
    tie = plan_length({"fp32": 0.05, "bf16": 0.05}, evals, 100, 0, 60, 5.0)
    assert tie.precision == "fp32"  # the first among equals


def test_checkpoints_are_planned_per_epoch():
    import torch

    from vitkit.training.planner import measure_save

    assert measure_save(torch.nn.Linear(64, 64)) > 0
    evals = {"fp32": 0.0}
    without = plan_length({"fp32": 0.05}, evals, 10, 0, 1000, 1.0)
    with_saves = plan_length({"fp32": 0.05}, evals, 10, 0, 1000, 1.0, save_s=0.5)
    assert with_saves.epochs == int(60 * SAFETY // 1.0) < without.epochs == int(60 * SAFETY // 0.5)


def test_the_default_budget_grows_with_the_data():
    assert default_budget(1_437) == default_budget(10_000) == 5.0
    assert default_budget(50_000) == 25.0 and default_budget(1_000_000) == 30.0


def test_a_planned_run_records_its_plan_and_keeps_it_on_resume(tmp_path, capsys):
    cfg = tiny_train_config(tmp_path / "run", epochs=None, run={"time_budget": 0.03})
    step_s, eval_s = {"fp32": 0.05}, {"fp32": 0.0002}
    trainer = Trainer(cfg, measured_steps=(step_s, eval_s))
    want = plan_length(step_s, eval_s, trainer.steps_per_epoch, len(trainer.data.val), 60, 0.03,
                       trainer.extra_meta["plan"]["spent_s"])
    assert trainer.epochs == want.epochs == 1 and trainer.precision == "fp32"
    trainer.run()
    out = capsys.readouterr().out
    assert "plan: 8x8, patch 2, 2 layers, fp32, 1 epochs (of 60: the budget)" in out
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["plan"]["epochs"] == 1 and meta["plan"]["step_s"] == step_s
    assert meta["train"]["run"]["epochs"] == 1  # the recipe holds the plan: a resumed run keeps it


def test_explicit_epochs_win_over_the_planner(tmp_path, capsys):
    fit(tiny_train_config(tmp_path / "run", epochs=1))
    assert "plan:" not in capsys.readouterr().out
    assert "plan" not in json.loads((tmp_path / "run" / "config.json").read_text())


@pytest.mark.parametrize("budget_min", [0.1])
def test_a_planned_run_ends_within_its_budget(tmp_path, budget_min):
    """Timed for real on this machine: the planned run ends within its budget plus evaluation."""
    cfg = tiny_train_config(tmp_path / "run", epochs=None, run={"time_budget": budget_min})
    t = time.perf_counter()
    result = fit(cfg)
    wall = time.perf_counter() - t
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert result.status in ("finished", "budget") and meta["plan"]["budget_min"] == budget_min
    assert wall <= budget_min * 60 + 10, wall  # the final evaluation and saving on top


def test_a_planned_large_set_trains_what_its_budget_holds(tmp_path, monkeypatch, capsys):
    from vitkit.training import batches

    monkeypatch.setattr(batches, "BUDGET_IMAGES", 1000)  # digits' 1,437 training images as a large set
    monkeypatch.setattr(batches, "DEFAULT_IMAGES", 1437 * 12)  # for which the rule alone gives 12 epochs
    step_s, eval_s = {"fp32": 0.5}, {"fp32": 0.0}
    trainer = Trainer(tiny_train_config(tmp_path / "run", epochs=None), measured_steps=(step_s, eval_s))
    want = plan_length(step_s, eval_s, trainer.steps_per_epoch, len(trainer.data.val), 60,
                       default_budget(1437), trainer.extra_meta["plan"]["spent_s"])
    assert trainer.epochs == want.epochs and 12 < want.epochs < 60
    assert "1,437 training images: as many epochs as the default budget holds" in capsys.readouterr().out
    explicit = Trainer(tiny_train_config(tmp_path / "explicit", epochs=None, run={"time_budget": 0.5}),
                       measured_steps=(step_s, eval_s))
    assert explicit.extra_meta["plan"]["budget_min"] == 0.5 and explicit.epochs < want.epochs
