import json

import pytest

from vitkit.bench import Workload, run
from vitkit.config import ViTConfig

pytestmark = pytest.mark.precision  # make test runs these again as on the other kind of CPU

pytest.importorskip("timm")
pytest.importorskip("transformers")


def test_benchmark_times_all_three_libraries_and_writes_json(tmp_path, capsys):
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64,
                    num_classes=10)
    chosen = [Workload("tiny", cfg, 4, "infer", "fp32"), Workload("tiny", cfg, 4, "train", "bf16")]
    result = run("cpu", repeats=2, json_path=tmp_path / "s.json", selected=chosen, loader=False)
    out = capsys.readouterr().out
    assert "| tiny | infer | fp32 | 4 |" in out and "| tiny | train | bf16 | 4 |" in out
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    for row in saved["rows"]:
        assert set(row["images_per_s"]) == {"vitkit", "timm", "hf"}
        assert all(v > 0 for v in row["images_per_s"].values())
        assert row["vs_timm"] == pytest.approx(row["images_per_s"]["vitkit"] / row["images_per_s"]["timm"])
    train = saved["rows"][1]["peak_mib"]  # training rows carry each library's peak memory
    assert set(train) == {"vitkit", "timm", "hf"} and all(v > 0 for v in train.values())


def test_cpu_peak_memory_counts_the_step_tensors():
    """The profiler-based peak grows with the batch the way activation memory must."""
    from vitkit.bench import peak_memory_mib

    cfg = ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_layers=2, num_heads=2, mlp_size=128,
                    num_classes=10)
    small, large = (peak_memory_mib("vitkit", Workload("t", cfg, b, "train", "fp32"), "cpu") for b in (8, 32))
    # a (32, 65, 64) fp32 activation is 0.5 MiB; dozens of them are kept for the backward pass
    assert 2 < small < large and large / small > 2.5
