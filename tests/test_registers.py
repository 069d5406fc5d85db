"""Register tokens (Darcet et al., ICLR 2024): timm's reg_token checkpoints load with equal
logits whichever way their position table is laid out, and the models export, pre-train and
show their attention like any other."""

import numpy as np
import pytest
import torch
from conftest import randomize_

import vitkit
from vitkit.config import ViTConfig
from vitkit.data.preprocess import InputSpec
from vitkit.formats.timm import timm_kwargs, to_timm
from vitkit.model import ViT

timm_vit = pytest.importorskip("timm.models.vision_transformer")

CFG = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_layers=2, num_heads=3, mlp_size=96,
                num_classes=5, register_tokens=4)


def images(n=3, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_registers_are_prefix_tokens_the_head_ignores():
    model = randomize_(ViT(CFG)).eval()
    assert CFG.num_prefix_tokens == 5 and model.pos_embed.shape[1] == 16 + 5
    tokens = model.forward_features(images())
    assert tokens.shape == (3, 1 + 4 + 16, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(images()), model.forward_head(tokens))  # fast path agrees
        model.reg_token.add_(torch.randn_like(model.reg_token))  # registers change what the class token reads
        assert not torch.allclose(model(images()), model.forward_head(tokens))
    out = model.forward_intermediates(images(), output="grid")
    assert out.patches[-1].shape == (3, 48, 4, 4) and out.prefix[-1].shape == (3, 5, 48)

@pytest.mark.parametrize("no_embed_class", [False, True])
@pytest.mark.parametrize("pool", ["token", "avg"])
@torch.no_grad()
def test_timm_reg_token_checkpoints_load_with_equal_logits(tmp_path, no_embed_class, pool):
    torch.manual_seed(0)
    theirs = timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                                        mlp_ratio=2.0, num_classes=5, reg_tokens=4, global_pool=pool,
                                        no_embed_class=no_embed_class, fc_norm=False)
    randomize_(theirs).eval()
    torch.save(theirs.state_dict(), tmp_path / "reg.pth")
    ours = vitkit.load(tmp_path / "reg.pth", num_heads=3, pool="cls" if pool == "token" else "mean")
    assert ours.config.register_tokens == 4
    x = images()
    assert (ours(x) - theirs(x)).abs().max().item() < 1e-5


@torch.no_grad()
def test_vitkit_registers_round_trip_through_timm():
    ours = randomize_(ViT(CFG)).eval()
    theirs = timm_vit.VisionTransformer(**timm_kwargs(CFG)).eval()
    theirs.load_state_dict(to_timm(ours.state_dict()))
    x = images()
    assert (ours(x) - theirs(x)).abs().max().item() < 1e-5


def test_register_model_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from vitkit.export import export_model
    from vitkit.export.runtime import open_onnx

    model = randomize_(ViT(CFG)).eval()
    spec = InputSpec((32, 32), 3, [0.5] * 3, [0.5] * 3)
    path, _ = export_model(model, list("abcde"), spec, tmp_path / "reg.onnx")
    x = images(2)
    with torch.no_grad():
        assert (open_onnx(path).model(x) - model(x)).abs().max().item() < 1e-4


def test_rollout_and_mae_handle_registers():
    from vitkit.training.objectives import MaskedAutoencoder, PretrainConfig
    from vitkit.visualize.analysis import attention_rollout, capture_attention, readout

    model = randomize_(ViT(CFG)).eval()
    attn = capture_attention(model, images(2))
    maps = readout(attention_rollout(attn), CFG.grid_size, CFG.num_prefix_tokens)
    assert maps.shape == (2, 4, 4) and np.isfinite(maps).all()
    encoder = ViT(CFG.replace(num_classes=0))
    mae = MaskedAutoencoder(encoder, PretrainConfig())
    seen = []
    encoder.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    loss, pred, mask = mae(images(2))
    assert seen == [5 + 4] and pred.shape == (2, 16, 8 * 8 * 3) and torch.isfinite(loss)
