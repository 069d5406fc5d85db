"""Activation checkpointing changes what is kept for the backward pass, never the gradients."""

import copy

import pytest
import torch

from vitkit import ViT, ViTConfig
from vitkit.training.memory import apply_activation_checkpointing, checkpointing_mode


def _model(**kw):
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=3, num_heads=2, mlp_size=64,
                    num_classes=5, dropout=0.1, drop_path=0.1, **kw)
    return ViT(cfg)


def _grads(model, x, y, seed=1):
    model.train()
    torch.manual_seed(seed)  # dropout and drop path draw the same masks in both runs
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["blocks", "selective"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_gradients_equal_with_and_without_checkpointing(mode, pool):
    ref = _model(pool=pool)
    ckpt = apply_activation_checkpointing(copy.deepcopy(ref), mode)
    assert checkpointing_mode(ckpt) == mode and checkpointing_mode(ref) == "none"
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3])
    la, ga = _grads(ref, x, y)
    lb, gb = _grads(ckpt, x, y)
    assert torch.equal(la, lb)
    assert ga.keys() == gb.keys()
    for k in ga:
        assert torch.equal(ga[k], gb[k]), k
    # the parameters and their names are the model's own: state dicts load either way
    assert list(ref.state_dict()) == list(ckpt.state_dict())


def test_checkpointing_recomputes_in_backward():
    """The blocks' forward runs again during the backward pass (and only then)."""
    model = apply_activation_checkpointing(_model(pool="mean"), "blocks")
    calls = []
    orig = torch.nn.functional.layer_norm

    def counting(*a, **k):
        calls.append(torch.is_grad_enabled())
        return orig(*a, **k)

    x = torch.randn(2, 3, 16, 16)
    torch.nn.functional.layer_norm = counting
    try:
        out = model(x).sum()
        n_forward = len(calls)
        out.backward()
    finally:
        torch.nn.functional.layer_norm = orig
    assert len(calls) - n_forward == 2 * 3  # two LayerNorms per block, three blocks, recomputed


def test_deepcopy_of_a_checkpointed_model_computes_with_its_own_weights():
    """An EMA copy must not run the original's weights through the bound forward."""
    model = apply_activation_checkpointing(_model(pool="mean"), "blocks")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.blocks[0].parameters():
            p.zero_()
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    twin.eval()
    assert not torch.equal(model.forward_features(x), twin.forward_features(x))
    assert twin.blocks[0].forward.__self__ is twin.blocks[0]


def test_unknown_mode():
    with pytest.raises(ValueError, match="must be one of none, blocks, selective"):
        apply_activation_checkpointing(_model(), "everything")
