"""vitkit.fastpath: the bf16 CPU attention routes compute softmax(QK^T / sqrt(d)) V and its
gradients, whether the N x N matrices are kept for the backward pass or recomputed."""

import torch
import torch.nn.functional as F

from vitkit import fastpath


def _grads(q, k, v):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fastpath.attend(q, k, v, q.shape[-1] ** -0.5)
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def test_kept_and_recomputed_attention_agree_with_the_fused_kernel(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 3, 17, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    assert 4 * 3 * 17 * 17 <= fastpath.KEEP_ATTENTION_ELEMENTS
    kept = _grads(q, k, v)
    monkeypatch.setattr(fastpath, "KEEP_ATTENTION_ELEMENTS", 0)  # as for large matrices
    recomputed = _grads(q, k, v)
    for a, b in zip(kept, recomputed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same products, in the same order
    q32, k32, v32 = (t.float().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q32, k32, v32)
    (ref * torch.linspace(-1, 1, ref.numel()).view_as(ref)).sum().backward()
    for a, b in zip(kept, (ref.detach(), q32.grad, k32.grad, v32.grad), strict=True):
        torch.testing.assert_close(a.float(), b, rtol=0.05, atol=0.05)
