"""The main job from the command line: train, evaluate, predict; and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vitkit.cli import main

TINY = ["--model.patch_size", "2", "--model.hidden_size", "32", "--model.num_layers", "2",
        "--model.num_heads", "2", "--model.mlp_size", "64", "--run.batch_size", "64",
        "--run.progress", "false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    main(["train", *TINY, "--run.epochs", "3", "--run.out", str(out)])
    return out


def test_train_prints_accuracy_and_next_steps(trained, capsys):
    assert (trained / "model.safetensors").is_file()


def test_evaluate_writes_confusion(trained, tmp_path, capsys):
    main(["evaluate", str(trained), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "360 images (" in out and "top-1" in out and "top-5" in out
    csv = (tmp_path / "confusion.csv").read_text().splitlines()
    assert len(csv) == 11 and csv[0].startswith("true\\predicted,0,1")
    counts = np.array([[int(v) for v in line.split(",")[1:]] for line in csv[1:]])
    assert counts.sum() == 360
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["top1"] == pytest.approx(np.trace(counts) / 360)
    assert Image.open(tmp_path / "confusion.png").size[0] > 200


def test_predict_table_and_json(trained, tmp_path, capsys):
    from vitkit.data.arrays import load_digits
    _, test = load_digits()
    files = []
    for i in range(3):  # digits as PNGs of another size and mode: prepared like training data
        img = Image.fromarray(test.images[i, 0].numpy()).resize((32, 32)).convert("RGB")
        files.append(tmp_path / f"d{i}_{test.labels[i].item()}.png")
        img.save(files[-1])
    (tmp_path / "broken.png").write_bytes(b"nope")
    main(["predict", str(trained), str(tmp_path), "--topk", "3", "--json", "true"])
    res = json.loads(capsys.readouterr().out)
    assert len(res) == 4
    good = [r for r in res if "top" in r]
    assert len(good) == 3 and all(len(r["top"]) == 3 for r in good)
    assert all(abs(sum(t["probability"] for t in r["top"])) <= 1.0001 for r in good)
    assert "cannot read image" in next(r for r in res if "error" in r)["error"]
    main(["predict", str(trained), str(files[0])])
    assert files[0].name in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    for argv in (["train", "--data.dataset", "folder", "--data.path", str(tmp_path / "missing"),
                  "--run.out", str(tmp_path / "o")],
                 ["evaluate", str(tmp_path / "nothing")],
                 ["predict", str(tmp_path / "nothing"), "x.png"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("vitkit: error:") and "missing" in err or "nothing" in err
        assert len(err.splitlines()) == 1


def test_checkpoint_classes_must_match_data(trained, tmp_path, capsys):
    root = tmp_path / "imgs"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), i * 40).save(root / c / f"{i}.png")
    with pytest.raises(SystemExit):
        main(["evaluate", str(trained), "--data.dataset", "folder", "--data.path", str(root),
              "--data.val_path", str(root)])
    assert "classes" in capsys.readouterr().err


def test_non_finite_loss_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *TINY, "--run.epochs", "2", "--run.out", str(tmp_path / "nan"), "--optim.lr", "1e30",
              "--optim.clip_grad", "null", "--optim.warmup", "0", "--run.log_every", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vitkit: error: loss became") and "Traceback" not in "\n".join(err)


def test_warnings_are_plain_lines(tmp_path):
    root = tmp_path / "imgs"
    for c in ("cat", "dog", "empty"):
        (root / c).mkdir(parents=True)
    for c in ("cat", "dog"):
        for i in range(4):
            Image.new("L", (8, 8), i * 40).save(root / c / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    # a process of its own: pytest records warnings itself and would hide the printed form
    p = subprocess.run([sys.executable, "-m", "vitkit.cli", "train", *TINY, "--run.epochs", "1",
                        "--run.out", str(tmp_path / "o"), "--data.dataset", "folder",
                        "--data.path", str(root), "--data.val_split", "0.5",
                        "--data.cache_dir", str(tmp_path / "cache")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    err = p.stderr.splitlines()
    warned = [line for line in err if line.startswith("vitkit: warning:")]
    assert any(f"{root / 'empty'}: no images; skipped, not a class" in w for w in warned)
    assert any("notes.txt" in w for w in warned)
    assert not any("warnings.warn" in line or "VitkitWarning" in line for line in err)


@pytest.mark.parametrize("command", ["info", "train", "pretrain", "finetune", "evaluate", "predict",
                                     "visualize", "convert", "bench", "serve", "export", "shards",
                                     "consolidate", "probe", "embed"])
def test_every_command_help_states_an_example(command, capsys):
    from vitkit.cli import COMMANDS

    assert command in COMMANDS
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # help text is wrapped to the terminal
    assert e.value.code == 0 and "Example" in out and f"vitkit {command}" in out.split("Example", 1)[1]


def test_a_small_labelled_folder_ends_with_a_finetune_suggestion(trained, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / c / f"{i}.png")
    main(["train", *TINY, "--run.epochs", "1", "--run.batch_size", "8", "--data.dataset", "folder",
          "--data.path", str(tmp_path / "imgs"), "--data.workers", "0", "--run.out", str(tmp_path / "run")])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("with 21 labelled images a pre-trained ViT usually does better: vitkit finetune ")
    assert f"--data.path {tmp_path / 'imgs'}" in last and "--mode linear" in last
    main(["evaluate", str(trained)])  # digits (not a folder): no suggestion
    assert "pre-trained ViT" not in capsys.readouterr().out
