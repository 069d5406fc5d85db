"""Real CIFAR-10 JPEGs from the shared archive: a short run on a subset beats chance widely.
Skipped when the archive is not there."""

import shutil
import subprocess
from pathlib import Path

import pytest

from vitkit.data.augment import AugmentConfig
from vitkit.data.pipeline import DataConfig
from vitkit.training import ModelSpec, OptimConfig, RunConfig, TrainConfig, fit

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"


@pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not present")
def test_cifar10_subset_from_jpeg_folders(tmp_path):
    subprocess.run(["tar", "-xzf", str(ARCHIVE), "-C", str(tmp_path)], check=True)
    root = tmp_path / "cifar10"
    sub = tmp_path / "subset"
    for split, n in (("train", 300), ("test", 100)):  # per class
        for cls in sorted((root / split).iterdir()):
            dest = sub / split / cls.name
            dest.mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                shutil.copy(f, dest / f.name)
    cfg = TrainConfig(
        data=DataConfig(dataset="folder", path=str(sub / "train"), val_path=str(sub / "test"),
                        cache_dir=str(tmp_path / "cache")),
        model=ModelSpec(patch_size=4, hidden_size=96, num_layers=4, num_heads=3, mlp_size=192,
                        stem="conv", stem_channels=32),
        optim=OptimConfig(lr=2e-3, weight_decay=0.05),
        augment=AugmentConfig(crop="pad", pad=4, flip=True),
        # a fixed number of steps, not a time budget: the result does not depend on the machine's load
        run=RunConfig(epochs=10, batch_size=128, out=str(tmp_path / "run"), progress=False,
                      precision="auto", eval_every=10),  # evaluated once, at the end
    )
    r = fit(cfg)
    assert r.val_acc is not None and r.val_acc > 0.30, r.val_acc  # chance is 0.10
