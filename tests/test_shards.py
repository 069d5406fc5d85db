"""Tar shards: written from an image folder, streamed so that every rank gets the same number
of batches and every used image appears once per epoch, whatever the number of workers."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.cli import main
from vitkit.data.shards import ShardStream, open_shards, read_shard


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """100 8x8 grayscale images, each filled with its own number, in 3 classes; shards of 7."""
    root = tmp_path_factory.mktemp("shards")
    src = root / "images"
    for i in range(100):
        d = src / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(d / f"{i:03d}.png")
    main(["shards", str(src), str(root / "out"), "--shard_size", "7"])
    return root / "out"


def _epoch(ds, workers):
    loader = torch.utils.data.DataLoader(ds, batch_size=ds.batch_size // ds.world, num_workers=workers)
    return [(x[:, 0, 0, 0].tolist(), y.tolist()) for x, y in loader]


def test_writes_webdataset_layout(shard_dir):
    meta = json.loads((shard_dir / "index.json").read_text())
    assert meta["classes"] == ["c0", "c1", "c2"] and meta["total"] == 100
    assert [s["count"] for s in meta["shards"]] == [7] * 14 + [2]
    first = list(read_shard(str(shard_dir / "shard-000000.tar")))
    key, data, label = first[0]
    assert len(key) == 9 and data[:4] == b"\x89PNG"  # the key: the file's place in the folder's index
    # each label travels with its image (image i, filled with i, is in class i % 3)
    assert all(np.asarray(Image.open(io.BytesIO(d)))[0, 0] % 3 == y for _, d, y in first)
    # samples are spread over the shards in a seeded random order, so a shard mixes the classes
    assert len({y for _, _, y in first}) > 1
    keys = [k for i in range(15) for k, _, _ in read_shard(str(shard_dir / f"shard-{i:06d}.tar"))]
    assert sorted(keys) == [f"{i:09d}" for i in range(100)]


def test_two_ranks_two_workers_see_every_image_once_with_equal_batches(shard_dir):
    shards = open_shards(str(shard_dir))
    seen = {}
    for epoch in (0, 1):
        per_rank = []
        for rank in (0, 1):
            ds = ShardStream(shards, 1, batch_size=8, seed=3, rank=rank, world=2, shuffle_buffer=10)
            ds.set_epoch(epoch)
            batches = _epoch(ds, workers=2)
            assert all(len(x) == 4 for x, _ in batches)
            per_rank.append(batches)
            # labels travel with their images (image i is in class i % 3)
            assert all(y == v % 3 for x, ys in batches for v, y in zip(x, ys, strict=True))
        assert len(per_rank[0]) == len(per_rank[1]) == 12  # 100 // 8 global batches
        images = [v for batches in per_rank for x, _ in batches for v in x]
        assert len(images) == len(set(images)) == 96
        seen[epoch] = images
        # the same images, whatever the number of workers
        for workers in (0, 1):
            other = []
            for rank in (0, 1):
                ds = ShardStream(shards, 1, batch_size=8, seed=3, rank=rank, world=2, shuffle_buffer=10)
                ds.set_epoch(epoch)
                other += [v for x, _ in _epoch(ds, workers) for v in x]
            assert sorted(other) == sorted(images)
    assert seen[0] != seen[1]  # a new order every epoch


def test_pipe_and_evaluation_order(shard_dir):
    shards = open_shards(str(shard_dir))
    shards.names = [f"pipe:cat {shard_dir / n}" for n in shards.names]
    ds = ShardStream(shards, 1, train=False, batch_size=16)
    values = [v for x, _ in _epoch(ds, 2) for v in x]
    assert sorted(values) == list(range(100))


def test_trains_on_shards(shard_dir, tmp_path):
    from helpers import tiny_train_config

    from vitkit.training import fit

    cfg = tiny_train_config(tmp_path / "run", epochs=2, data={"dataset": "shards", "path": str(shard_dir),
                                                              "val_path": str(shard_dir), "workers": 2},
                            augment={"crop": "resized", "flip": True}, run={"batch_size": 16})
    batch_crops = []
    r = fit(cfg, on_step=lambda t: batch_crops.append(t.augment.cfg.crop))
    assert r.status == "finished" and r.step == 2 * (100 // 16)
    assert set(batch_crops) == {"none"}  # cropped in the workers, not again on the batch


@pytest.mark.parametrize("crop", ["pad", "resized"])
def test_streamed_training_follows_the_augment_config(shard_dir, crop):
    """Only crop="resized" is taken on decoding (from the full-size image); everything else runs
    on whole batches as for cached data, so no image is cropped twice."""
    from vitkit.data.augment import AugmentConfig
    from vitkit.data.pipeline import DataConfig
    from vitkit.plan import load_data

    cfg = DataConfig(dataset="shards", path=str(shard_dir), val_path=str(shard_dir), image_size=6)
    d = load_data(cfg, AugmentConfig(crop=crop, scale_min=0.5))
    assert d.cropped == (crop == "resized")
    ds = d.train
    ds.batch_size = 10
    ds.set_epoch(0)
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=10)))
    assert x.shape == (10, 1, 6, 6) and x.dtype == torch.uint8
    # constant images stay constant under a resize or a crop: each is its sample number, i % 3 == label
    assert all(int(v) % 3 == int(c) for v, c in zip(x[:, 0, 0, 0], y, strict=True))
    if crop == "resized":
        assert ds.transform.scale == (0.5, 1.0)
    else:
        assert ds.transform is None and ds.size == (6, 6)


def test_shards_over_http(shard_dir):
    """A URL prefix works like a directory: the index and every shard are fetched over HTTP."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(shard_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        shards = open_shards(f"http://127.0.0.1:{server.server_address[1]}")
        assert shards.total == 100 and shards.location(0).startswith("http://127.0.0.1:")
        ds = ShardStream(shards, 1, train=False, batch_size=16)
        assert sorted(v for x, _ in _epoch(ds, 2) for v in x) == list(range(100))
    finally:
        server.shutdown()
        server.server_close()
