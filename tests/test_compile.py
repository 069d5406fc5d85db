"""torch.compile: when "auto" compiles, and that compiled inference and training compute what eager does."""

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_

from vitkit.compile import compile_model, compile_wanted
from vitkit.config import ViTConfig
from vitkit.inference import for_inference
from vitkit.model import ViT
from vitkit.precision import autocast

TINY = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64,
                 num_classes=5)


def tiny(seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    return randomize_(ViT(TINY), seed)


@pytest.mark.parametrize("choice, device, want", [
    ("auto", "cpu", False), ("auto", "cuda", False), (True, "cpu", True), ("true", "cpu", True),
    (False, "cuda", False), ("false", "cpu", False)])
def test_compile_choice(choice, device, want):
    assert compile_wanted(choice, device) is want


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="expected auto, true or false"):
        compile_wanted("sometimes", "cpu")


def test_auto_leaves_the_model_eager():
    model = tiny()
    assert for_inference(model, "fp32") is model and model._compiled_call_impl is None


@pytest.mark.parametrize("precision, tol, backend", [("fp32", 1e-4, "inductor"), ("bf16", 2e-2, "aot_eager")])
def test_compiled_inference_matches_eager(precision, tol, backend, capsys):
    """One inductor compilation (the tiny model compiles in seconds on an idle CPU); bf16
    through aot_eager, which traces the graph the same way without generating code."""
    eager, compiled = for_inference(tiny(), precision), tiny()
    if backend != "inductor":
        compile_model(compiled, True, backend=backend, label="model for inference")
    for_inference(compiled, precision, compile=True)
    for_inference(compiled, precision, compile=True)  # preparing again changes nothing
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode(), autocast(torch.device("cpu"), precision):
        want = eager(x).float()
        got = [compiled(x).float() for _ in range(2)]
    for g in got:
        torch.testing.assert_close(g, want, atol=tol, rtol=tol)
    assert capsys.readouterr().err.count(f"vitkit: compiled the model for inference ({backend}) in") == 1


def test_compiled_training_steps_match_eager():
    """Two AdamW steps through the compiled graph (aot_eager: autograd traced as inductor
    would, without its code generation) leave the weights where eager steps do."""
    models = [tiny(), tiny()]
    assert compile_model(models[1], True, backend="aot_eager")
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    losses = []
    for m in models:
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        run = []
        for _ in range(2):
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            run.append(loss.item())
        losses.append(run)
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4, msg=name)
