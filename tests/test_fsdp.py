"""FSDP2 (torch.distributed.fsdp.fully_shard) on two CPU processes (gloo): it trains as one
process does, its sharded checkpoints resume bit-exactly (also on another number of
processes), and they consolidate into an ordinary model folder."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(*args, port=29541, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={port}", str(HERE / "fsdp_worker.py"), *map(str, args)]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout[-1500:], p.stderr[-3000:])
    return p


def _rows(run_dir):
    with open(Path(run_dir) / "metrics.csv") as f:
        return [(float(r["train_loss"]), float(r["val_acc"])) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Two FSDP processes, EMA on, selective activation checkpointing, two epochs."""
    out = tmp_path_factory.mktemp("fsdp") / "full"
    _torchrun(out, "--logits", out.parent / "logits.pt")
    return out


def test_fsdp_on_two_processes_trains_as_one_process(full_run, tmp_path):
    sys.path.insert(0, str(HERE))
    from fsdp_worker import config

    from vitkit.training import fit

    one = fit(config(str(tmp_path / "one"), strategy="ddp", checkpointing="none"))  # one process, plain
    a, b = _rows(one.run_dir), _rows(full_run)
    assert len(a) == len(b) == 2
    for (la, va), (lb, vb) in zip(a, b, strict=True):
        assert abs(la - lb) <= 1e-4, (la, lb)
        assert abs(va - vb) <= 1 / 360 + 1e-9
    # the files of an ordinary run, plus the sharded state instead of state.pt
    names = {p.name for p in full_run.iterdir() if not p.name.startswith(".")}
    assert {"config.json", "model.safetensors", "train.yaml", "metrics.csv", "state.dcp"} <= names
    assert "state.pt" not in names
    assert sorted(p.name for p in (full_run / "state.dcp").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "progress.pt"]


def test_fsdp_checkpoint_resumes_bit_exactly_and_consolidates(full_run, tmp_path):
    from vitkit import ViT
    from vitkit.training.sharding import consolidate

    cut = tmp_path / "cut"
    _torchrun(cut, "--stop_at", 27, port=29542)  # mid-way through the second epoch
    state = torch.load(cut / "state.dcp" / "progress.pt", weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 5, 27)
    _torchrun(cut, "--resume", port=29543)
    # (a resumed epoch's train loss averages only the steps it ran; the weights are what count)
    assert [v for _, v in _rows(cut)] == [v for _, v in _rows(full_run)]
    a = load_file(str(full_run / "model.safetensors"))
    b = load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the sharded state consolidates into a model folder: the trained weights give the
    # sharded model's own logits; by default the EMA weights, which model.safetensors holds
    trained = ViT.from_pretrained(consolidate(full_run, tmp_path / "trained", ema=False)).eval()
    ref = torch.load(full_run.parent / "logits.pt", weights_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers ran: the same kernels, the same sums
    try:
        with torch.no_grad():
            assert torch.equal(trained(ref["x"]), ref["logits"])
    finally:
        torch.set_num_threads(threads)
    ema = consolidate(full_run, tmp_path / "ema")
    c = load_file(str(ema / "model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert (ema / "config.json").is_file()


def test_fsdp_checkpoint_resumes_on_one_process(tmp_path, full_run):
    """Saved by two processes mid-epoch, continued by one (DCP reshards on load)."""
    cut = tmp_path / "cut"
    _torchrun(cut, "--stop_at", 27, port=29544)
    p = subprocess.run([sys.executable, str(HERE / "fsdp_worker.py"), str(cut), "--resume"], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "saved by 2 processes" in p.stdout
    # equal up to the order of the gradient sums (two rank means against one mean)
    with open(cut / "metrics.csv") as f, open(full_run / "metrics.csv") as g:
        va = [float(r["val_loss"]) for r in csv.DictReader(f)]
        vb = [float(r["val_loss"]) for r in csv.DictReader(g)]
    assert len(va) == len(vb) == 2 and all(abs(x - y) <= 1e-4 for x, y in zip(va, vb, strict=True))
    a = load_file(str(full_run / "model.safetensors"))
    b = load_file(str(cut / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4
