"""Pre-training without labels: MAE and masked patch prediction learn, mask exactly what they
say, run the encoder on visible patches only, resume exactly, and publish an encoder."""

import json
import os
import signal

import pytest
import torch
from helpers import tiny_train_config
from safetensors.torch import load_file

from vitkit.config import ViTConfig
from vitkit.loading import open_model
from vitkit.model import ViT
from vitkit.pretrain import pretrain
from vitkit.training import fit
from vitkit.training.objectives import (
    MaskedAutoencoder,
    MaskedPatchPrediction,
    PretrainConfig,
    patchify,
    random_keep,
)


def encoder(channels=3, size=16, patch=4) -> ViT:
    torch.manual_seed(0)
    return ViT(ViTConfig(image_size=size, patch_size=patch, hidden_size=32, num_layers=2, num_heads=2,
                         mlp_size=64, num_classes=0, num_channels=channels, stem="patch"))


@pytest.mark.parametrize("ratio, n, masked", [(0.75, 16, 12), (0.5, 16, 8), (0.75, 196, 147), (0.9, 4, 3)])
def test_masking_is_exactly_the_requested_ratio(ratio, n, masked):
    keep, mask = random_keep(5, n, ratio, torch.device("cpu"))
    assert keep.shape == (5, n - masked)
    assert mask.sum(1).tolist() == [masked] * 5
    assert torch.all(mask.gather(1, keep) == 0)  # the kept patches are exactly the unmasked ones
    assert len({tuple(k.tolist()) for k in keep}) > 1  # a new draw per sample


def test_mae_encoder_sees_only_the_visible_patches():
    mae = MaskedAutoencoder(encoder(), PretrainConfig(objective="mae"))
    seen = []
    mae.encoder.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    x = torch.randn(3, 3, 16, 16)
    loss, pred, mask = mae(x)
    assert seen == [torch.Size([3, 1 + 4, 32])]  # class token + 25% of the 16 patches
    assert pred.shape == (3, 16, 4 * 4 * 3) and mask.shape == (3, 16) and loss.ndim == 0


def test_patchify_matches_the_patch_embedding_order():
    enc = encoder()
    x = torch.randn(2, 3, 16, 16)
    w = enc.patch_embed.proj.weight  # (D, C, P, P)
    flat = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)  # (D, P*P*C) in patchify's order
    expected = enc.patch_embed(x)
    got = patchify(x, 4) @ flat.T + enc.patch_embed.proj.bias
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_mpp_targets_and_corruption():
    mpp = MaskedPatchPrediction(encoder(), PretrainConfig(objective="mpp"), [0.5] * 3, [0.5] * 3)
    img = torch.zeros(1, 3, 16, 16)
    img[:, 0, :4, :4] = 1.0  # first patch pure red, the rest black
    x = (img - 0.5) / 0.5
    t = mpp.targets(x)
    assert t.shape == (1, 16) and t[0, 0].item() == 7 and t[0, 1:].eq(0).all()
    tokens = torch.randn(200, 16, 32)
    out, mask = mpp.corrupt(tokens)
    assert mask.sum(1).eq(8).all()
    is_mask = (out == mpp.mask_embedding).all(-1)
    unchanged = (out == tokens).all(-1)
    assert not (is_mask & (mask == 0)).any() and unchanged[mask == 0].all()
    corrupted = mask.sum().item()
    assert 0.75 < is_mask.sum().item() / corrupted < 0.85  # 80% -> [mask]
    assert 0.05 < (unchanged & (mask > 0)).sum().item() / corrupted < 0.16  # 10% kept (+ a few self-swaps)


@pytest.mark.parametrize("objective", ["mae", "mpp"])
def test_loss_decreases_on_digits_and_publishes_an_encoder(tmp_path, objective):
    cfg = tiny_train_config(tmp_path / objective, epochs=4)
    result = pretrain(cfg, PretrainConfig(objective=objective))
    losses = [m["train_loss"] for m in result.metrics]
    assert losses[-1] < 0.9 * losses[0], losses
    assert result.metrics[-1]["val_loss"] is not None and result.val_acc is None
    meta = json.loads((tmp_path / objective / "config.json").read_text())
    assert meta["pretrain"]["objective"] == objective and meta["model"]["num_classes"] == 0
    weights = load_file(str(tmp_path / objective / "model.safetensors"))
    assert not any(k.startswith(("decoder", "predict", "mask", "encoder.")) for k in weights)
    opened = open_model(tmp_path / objective)
    features = opened.model.forward_features(torch.zeros(2, 1, 8, 8))
    assert features.shape == (2, 1 + 16, 32)


@pytest.mark.parametrize("command", ["pretrain", "train"])
def test_interrupted_pretraining_resumes_exactly(tmp_path, command):
    """vitkit pretrain --resume and vitkit train --resume continue the same objective."""
    objective = PretrainConfig(objective="mae")
    full = pretrain(tiny_train_config(tmp_path / "full", epochs=2), objective)
    steps = 1437 // 64

    def interrupt(trainer):
        if trainer.state.step == steps + 3:
            os.kill(os.getpid(), signal.SIGINT)

    cut = pretrain(tiny_train_config(tmp_path / "cut", epochs=2), objective, on_step=interrupt)
    assert cut.status == "interrupted"
    resumed = (pretrain if command == "pretrain" else fit)(None, resume=tmp_path / "cut")
    assert resumed.status == "finished" and resumed.step == full.step
    a = torch.load(tmp_path / "full" / "state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)["model"]
    assert any(k.startswith("decoder") for k in a)  # the decoder is part of the resumable state
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_objective_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="mask_ratio"):
        pretrain(tiny_train_config(tmp_path / "r"), PretrainConfig(mask_ratio=1.0))
    cfg = tiny_train_config(tmp_path / "c", model={"stem": "conv"})
    with pytest.raises(ValueError, match="patch embedding"):
        pretrain(cfg, PretrainConfig(objective="mae"))
    fit(tiny_train_config(tmp_path / "sup", epochs=1))
    with pytest.raises(ValueError, match="not a pre-training run"):
        pretrain(None, resume=tmp_path / "sup")


def test_visualize_draws_the_reconstruction_of_an_mae_run(tmp_path):
    from vitkit.visualize.run import visualize_path

    pretrain(tiny_train_config(tmp_path / "mae", epochs=1), PretrainConfig(objective="mae"))
    result = visualize_path(tmp_path / "mae", tmp_path / "fig", data="digits", num_samples=4, max_images=2)
    png = tmp_path / "fig" / "reconstruction.png"
    assert png in result.figures and png.stat().st_size > 1000
    mae = MaskedAutoencoder(encoder(channels=1, size=8, patch=2), PretrainConfig())
    x = torch.randn(2, 1, 8, 8)
    masked, rebuilt = mae.reconstruct(x)
    visible = masked != 0
    torch.testing.assert_close(rebuilt[visible], x[visible])  # visible pixels come back as they were
    fit(tiny_train_config(tmp_path / "sup", epochs=1))
    assert tmp_path / "fig2" / "reconstruction.png" not in visualize_path(
        tmp_path / "sup", tmp_path / "fig2", data="digits", num_samples=2, max_images=1).figures


def test_a_folder_without_class_subfolders_pretrains_and_is_refused_by_supervised_training(tmp_path):
    import numpy as np
    from PIL import Image

    from vitkit.data.pipeline import DataConfig

    rng = np.random.default_rng(0)
    flat = tmp_path / "photos"
    flat.mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(flat / f"{i}.png")
    cfg = tiny_train_config(tmp_path / "run", epochs=2)
    cfg.data = DataConfig(dataset="folder", path=str(flat), val_split=0.25, workers=0)
    cfg.run.batch_size = 8
    result = pretrain(cfg, PretrainConfig(objective="mae"))
    assert result.status == "finished" and result.step == 2 * (30 // 8)
    with pytest.raises(ValueError, match="at least two classes .*vitkit pretrain"):
        cfg.run.out = str(tmp_path / "sup")
        fit(cfg)
