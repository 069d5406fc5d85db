"""Two CPU processes under torchrun (gloo) train as one process with the same global batch; the
two DDP processes recompute their encoder blocks (activation checkpointing), the one process does not."""

import csv
import os
import subprocess
import sys

ARGS = ["train", "--model.patch_size", "2", "--model.hidden_size", "32", "--model.num_layers", "2",
        "--model.num_heads", "2", "--model.mlp_size", "64", "--model.stem", "patch",
        "--run.batch_size", "64", "--run.epochs", "2", "--run.progress", "false", "--run.threads", "1",
        "--run.precision", "fp32", "--augment.crop", "none"]


def _losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [(float(r["train_loss"]), float(r["val_acc"])) for r in csv.DictReader(f)]


def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "vitkit.cli", *ARGS, "--run.out", str(one)],
                   check=True, env=env, capture_output=True, timeout=300)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "vitkit.cli", *ARGS, "--run.activation_checkpointing", "blocks",
                        "--run.out", str(two)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 2
    for (la, va), (lb, vb) in zip(a, b, strict=True):
        assert abs(la - lb) <= 1e-4 * max(1.0, abs(la)), (la, lb)
        assert abs(va - vb) <= 1 / 360 + 1e-9  # at most one borderline image may flip
    # only rank 0 wrote files
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in one.iterdir() if not p.name.startswith("."))
