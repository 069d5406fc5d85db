"""Bad input from the command line: a one-line error naming the option or file, a non-zero
exit, and nothing written (or the previous checkpoint intact)."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_ARGS
from PIL import Image

from vitkit.cli import main


def _fail(argv, capsys) -> tuple[int, str, str]:
    """Run the command, expecting it to stop; returns (exit code, stdout, the stderr line)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err.strip()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["train", *TINY_ARGS, "--data.per_class", "20", "--run.epochs", "1", "--run.out", str(d)])
    return d, printed.getvalue()


@pytest.mark.parametrize("args, names", [
    (["--run.batch_size", "0"], "--run.batch_size 0: must be 1 or more"),
    (["--run.batch_size=-4"], "--run.batch_size -4"),
    (["--data.image_size=-5"], "--data.image_size -5"),
    (["--data.image_size", "0"], "--data.image_size 0"),
    (["--run.epochs", "0"], "--run.epochs 0: must be 1 or more"),
    (["--optim.lr=-1e-3"], "--optim.lr -0.001: must be > 0"),
    (["--optim.lr", "-1e-3"], "--optim.lr -0.001: must be > 0"),  # as typed: a value, not an option
    (["--optim.weight_decay", "-0.1"], "--optim.weight_decay -0.1"),
    (["--optim.warmup", "1.5"], "--optim.warmup 1.5"),
    (["--model.hidden_size", "30", "--model.num_heads", "4"], "not divisible by --model.num_heads 4"),
    (["--model.dropout", "1.0"], "--model.dropout 1.0"),
    (["--augment.label_smoothing", "1"], "--augment.label_smoothing 1"),
    (["--data.val_split", "0"], "--data.val_split 0"),
])
def test_bad_numbers_are_refused_before_loading(args, names, tmp_path, capsys, monkeypatch):
    def no_loading(*a, **k):
        raise AssertionError("data were loaded before the options were checked")

    monkeypatch.setattr("vitkit.training.trainer.plan_input", no_loading)
    out_dir = tmp_path / "run"
    code, out, err = _fail(["train", *args, "--run.out", str(out_dir)], capsys)
    assert code == 2
    assert err.startswith("vitkit: error: ") and names in err and len(err.splitlines()) == 1
    assert "usage" not in out + err
    assert not out_dir.exists()


def test_finetune_checks_options_before_opening_weights(tmp_path, capsys):
    code, _, err = _fail(["finetune", str(tmp_path / "missing"), "--run.batch_size", "0",
                          "--run.out", str(tmp_path / "ft")], capsys)
    assert code == 2 and "--run.batch_size 0" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ft").exists()


def test_closing_line_names_only_what_was_written(run):
    d, printed = run
    line = next(ln for ln in printed.splitlines() if ln.startswith("wrote "))
    names = line.removeprefix(f"wrote {d}/").split(", ")
    assert "state.pt" in names and "state.dcp/" not in names
    assert all((d / n.rstrip("/")).exists() for n in names)


def test_predict_with_no_readable_input_fails_on_stderr(run, tmp_path, capsys):
    bad = tmp_path / "notanimage.png"
    bad.write_bytes(b"this is text")
    code, out, err = _fail(["predict", str(run[0]), str(bad)], capsys)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert str(bad) in lines[0] and lines[-1].startswith("vitkit: error: none of the 1 input(s)")


def _killed_writer(path: Path) -> None:
    """A process killed with SIGKILL in the middle of an atomic write of `path`."""
    code = ("import os, signal, sys\nfrom vitkit.files import atomic_write\n"
            "atomic_write(sys.argv[1], lambda f: (f.write(b'half'), f.flush(), "
            "os.kill(os.getpid(), signal.SIGKILL)))\n")
    subprocess.run([sys.executable, "-c", code, str(path)], timeout=120)


def test_killed_save_leaves_nothing_after_resume(run, tmp_path, capsys):
    d = tmp_path / "run"
    shutil.copytree(run[0], d)
    _killed_writer(d / "train.yaml")
    left = [p.name for p in d.iterdir() if p.name.startswith(".train.yaml.")]
    assert len(left) == 1 and left[0].endswith(".tmp")
    weights = (d / "model.safetensors").read_bytes()
    main(["train", "--resume", str(d)])  # a finished run: nothing to train, nothing to save
    capsys.readouterr()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    assert (d / "model.safetensors").read_bytes() == weights


def test_next_write_removes_leftovers_but_not_live_writes(tmp_path):
    from vitkit.files import atomic_write_bytes

    _killed_writer(tmp_path / "curves.png")
    live = tmp_path / f".metrics.csv.{os.getpid()}-abcd1234.tmp"  # a write in progress
    live.write_bytes(b"")
    atomic_write_bytes(tmp_path / "other.json", b"{}")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["other.json", live.name])


class Payload:
    """Any class: unpickling it would run code from the file."""


def test_resume_refuses_state_holding_code(run, tmp_path, capsys):
    d = tmp_path / "run"
    shutil.copytree(run[0], d)
    state = torch.load(d / "state.pt", weights_only=True)
    state["extra"] = Payload()
    torch.save(state, d / "state.pt")
    before = (d / "state.pt").read_bytes()
    code, _, err = _fail(["train", "--resume", str(d)], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{d / 'state.pt'}: holds objects other than tensors" in err and "not loaded" in err
    assert "weights_only" not in err
    assert (d / "state.pt").read_bytes() == before


def test_oversized_upload_names_the_configured_limit():
    from vitkit.serve.images import UploadError, decode_image, set_pixel_limit

    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, format="PNG")
    old = Image.MAX_IMAGE_PIXELS
    try:
        set_pixel_limit(40_000_000)
        with pytest.raises(UploadError) as e:
            decode_image(buf.getvalue(), 40_000_000)
    finally:
        Image.MAX_IMAGE_PIXELS = old
    assert e.value.status == 413
    assert "40,000,000" in e.value.message and "80000000" not in e.value.message
    assert "81,000,000 pixels" in e.value.message


def test_folder_of_splits_is_read_as_splits(tmp_path, capsys):
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c, level in (("cat", 40), ("dog", 200)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                px = np.clip(level + rng.integers(-20, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(root / split / c / f"{i}.png")
    out = tmp_path / "run"
    main(["train", *TINY_ARGS, "--data.dataset", "folder", "--data.path", str(root), "--run.epochs", "1",
          "--run.out", str(out), "--data.cache_dir", str(tmp_path / "cache")])
    printed = capsys.readouterr().out
    meta = json.loads((out / "config.json").read_text())
    assert meta["classes"] == ["cat", "dog"]
    notes = [ln for ln in printed.splitlines() if "split folders" in ln]
    assert len(notes) == 1 and str(root / "train") in notes[0] and str(root / "val") in notes[0]
    assert "16 training and 6 validation images" in printed


# ---- outputs: nothing a user made is written over ------------------------------------------
def _digest(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_convert_onto_a_run_leaves_it_byte_identical_and_resumable(run, tmp_path, capsys):
    victim = tmp_path / "victim"
    shutil.copytree(run[0], victim)
    before = _digest(victim)
    for argv in (["convert", str(run[0]), str(victim), "--to", "vitkit"],
                 ["convert", str(run[0]), str(victim), "--to", "hf"],
                 ["convert", str(victim), str(victim), "--to", "hf", "--overwrite", "true"],  # in place
                 ["convert", str(victim), str(victim / "sub"), "--to", "vitkit"],  # inside the source
                 ["convert", str(run[0]), str(victim / "model.safetensors"), "--to", "timm"]):
        code, out, err = _fail(argv, capsys)
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and str(victim) in err, argv
    assert "already holds a training run" in _fail(["convert", str(run[0]), str(victim)], capsys)[2]
    assert "--overwrite true" in _fail(["convert", str(run[0]), str(victim)], capsys)[2]
    assert _digest(victim) == before and sorted(p.name for p in victim.iterdir()) == sorted(before)
    main(["train", "--resume", str(victim)])  # still a run that opens and resumes
    assert "is finished" in capsys.readouterr().out
    assert _digest(victim) == before


def test_convert_overwrite_replaces_the_folder_whole(run, tmp_path, capsys):
    victim = tmp_path / "victim"
    shutil.copytree(run[0], victim)
    main(["convert", str(run[0]), str(victim), "--to", "hf", "--overwrite", "true"])
    capsys.readouterr()
    assert sorted(p.name for p in victim.iterdir()) == ["config.json", "model.safetensors",
                                                          "preprocessor_config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_an_out_that_is_a_directory_is_refused_before_any_work(run, tmp_path, capsys, monkeypatch):
    def no_opening(*a, **k):
        raise AssertionError("the model was opened before --out was checked")

    monkeypatch.setattr("vitkit.loading.open_model", no_opening)
    monkeypatch.setattr("vitkit.loading.load_checkpoint", no_opening)
    busy = tmp_path / "busy"
    busy.mkdir()
    (tmp_path / "busy.npy").mkdir()
    code, _, err = _fail(["embed", str(run[0]), str(tmp_path), "--out", str(tmp_path / "busy.npy")], capsys)
    assert code == 2 and f"{tmp_path / 'busy.npy'}: is a directory" in err
    for argv in (["embed", str(run[0]), str(tmp_path), "--out", str(busy)],
                 ["probe", str(run[0]), "--out", str(busy)],
                 ["export", str(run[0]), str(busy)],
                 ["convert", str(run[0]), str(busy), "--to", "npz"],
                 ["bench", "--out", str(busy)]):
        code, out, err = _fail(argv, capsys)
        assert code == 2 and len(err.splitlines()) == 1, argv
        assert f"{busy}: is a directory" in err, argv
    assert list(busy.iterdir()) == []


@pytest.mark.parametrize("content, name", [(b"hello, not a model\n", "weights.txt"),
                                            (None, "photo.png"), (b"\x80\x02garbage", "weights.pth")])
@pytest.mark.parametrize("command", ["finetune", "probe", "predict"])
def test_a_file_that_is_not_a_checkpoint_is_one_line(command, content, name, tmp_path, capsys):
    f = tmp_path / name
    if content is None:
        Image.new("RGB", (8, 8)).save(f)
    else:
        f.write_bytes(content)
    extra = {"finetune": ["--run.out", str(tmp_path / "ft")], "probe": [],
             "predict": [str(f)]}[command]
    code, out, err = _fail([command, str(f), *extra], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and str(f) in err
    if name == "weights.pth":
        assert "not a readable PyTorch file" in err
    else:
        assert "not a checkpoint vitkit reads" in err and ".safetensors" in err and "Hub id" in err
    assert "unpickle" not in err
    assert not (tmp_path / "ft").exists()


def test_a_mistyped_local_path_is_missing_not_a_hub_id(tmp_path, capsys, monkeypatch):
    def no_hub(*a, **k):
        raise AssertionError("a local path was sent to the Hub")

    monkeypatch.setattr("vitkit.hub.hub_folder", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    code, _, err = _fail(["predict", "runs/nomodel", "x.png"], capsys)
    assert code == 2 and "runs/nomodel: no such file or directory" in err and len(err.splitlines()) == 1


# ---- labels and grids that leave nothing to learn -------------------------------------------
@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("unlabelled")
    rng = np.random.default_rng(0)
    flat, one = root / "flat", root / "one" / "cats"
    for d in (flat, one):
        d.mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return flat, one.parent


@pytest.mark.parametrize("mode", ["linear", "full", "lora"])
def test_finetune_needs_two_classes(mode, run, unlabelled, tmp_path, capsys):
    for root in unlabelled:
        out = tmp_path / f"ft-{root.name}"
        code, _, err = _fail(["finetune", str(run[0]), "--data.dataset", "folder", "--data.path", str(root),
                              "--mode", mode, "--run.out", str(out), "--data.cache_dir", str(tmp_path)],
                             capsys)
        assert code == 2 and len(err.splitlines()) == 1 and "1 class" in err
        assert "fine-tuning needs labelled images of at least two classes" in err
        assert not out.exists()


@pytest.mark.parametrize("linear", ["true", "false"])
def test_probe_needs_two_classes(linear, run, unlabelled, tmp_path, capsys):
    code, out, err = _fail(["probe", str(run[0]), "--data.dataset", "folder", "--data.path",
                            str(unlabelled[0]), "--linear", linear, "--out", str(tmp_path / "p.json"),
                            "--cache_dir", str(tmp_path)], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "probing needs labelled images of at least two classes" in err and "solver" not in err
    assert "100" not in out and not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("objective", ["mae", "mpp"])
def test_pretrain_refuses_a_grid_of_one_patch(objective, tmp_path, capsys):
    out = tmp_path / "pre"
    code, _, err = _fail(["pretrain", "--pretrain.objective", objective, "--data.image_size", "8",
                          "--model.patch_size", "8", "--model.stem", "patch", "--data.per_class", "5",
                          "--run.epochs", "1", "--run.out", str(out)], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "8x8 images in patches of 8 give a 1x1 grid" in err and "at least 4 patches" in err
    assert not out.exists()


# ---- numbers and ports --------------------------------------------------------------------
@pytest.mark.parametrize("argv, names", [
    (["pretrain", "--pretrain.mask_ratio", "nan"], "--pretrain.mask_ratio nan: expected a number"),
    (["train", "--run.epochs", "abc"], "--run.epochs abc: expected an integer"),
    (["predict", "runs/x", "a.png", "--topk", "many"], "--topk many: expected an integer"),
    (["train", "--data.dataset", "bogus"], "--data.dataset bogus: expected one of digits, folder"),
    (["serve", "runs/x", "--port", "abc"], "--port abc: expected an integer"),
    (["serve", "runs/x", "--port", "70000"], "--port 70000: must be a TCP port from 1 to 65535"),
    (["serve", "runs/x", "--port", "-5"], "--port -5: must be a TCP port from 1 to 65535"),
    (["serve", "runs/x", "--port", "0"], "--port 0: must be a TCP port from 1 to 65535"),
])
def test_bad_values_are_one_line(argv, names, capsys):
    code, out, err = _fail(argv, capsys)
    assert code == 2 and err.startswith("vitkit: error: ") and names in err and len(err.splitlines()) == 1
    assert "usage" not in out + err


# ---- resuming and the closing hints ----------------------------------------------------------
def test_resuming_a_finished_run_says_so_and_writes_nothing(run, tmp_path, capsys):
    d = tmp_path / "done"
    shutil.copytree(run[0], d, copy_function=shutil.copy2)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.iterdir()}
    main(["train", "--resume", str(d)])
    printed = capsys.readouterr().out
    assert f"{d} is finished (1 of 1 epochs): nothing to resume, nothing written" in printed
    assert f"resuming {d}" not in printed and "\nwrote" not in printed
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.iterdir()} == before


def test_closing_hints_quote_paths_with_spaces(tmp_path, capsys):
    import shlex

    d = tmp_path / "my runs" / "first try"
    main(["train", *TINY_ARGS, "--data.per_class", "10", "--run.epochs", "1", "--run.out", str(d)])
    hints = [ln for ln in capsys.readouterr().out.splitlines() if "vitkit evaluate" in ln]
    assert len(hints) == 1 and f"vitkit evaluate {shlex.quote(str(d))}" in hints[0]
    assert shlex.split(hints[0])[3] == str(d)
