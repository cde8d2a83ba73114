import pytest
import torch
import torch.nn.functional as F

from nonlocal_det.layers.aggregation import (
    concatenation_aggregate,
    dot_product_aggregate,
    softmax_aggregate,
)


def naive_concatenation(a, b, v):
    return torch.einsum("bnm,bmd->bnd", F.relu(a[:, :, None] + b[:, None, :]), v) / b.shape[1]


def test_concatenation_with_ties_and_exact_zeros():
    # Integer-valued a, b make many a_i + b_j exactly 0 and many b_j equal.
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-3, 4, (2, 50), generator=gen).double().requires_grad_()
    b = torch.randint(-3, 4, (2, 40), generator=gen).double().requires_grad_()
    v = torch.randn(2, 40, 5, dtype=torch.float64, generator=gen).requires_grad_()
    ours = concatenation_aggregate(a, b, v)
    ref = naive_concatenation(a, b, v)
    torch.testing.assert_close(ours, ref)
    go = torch.randn_like(ours)
    torch.testing.assert_close(
        torch.autograd.grad(ours, (a, b, v), go), torch.autograd.grad(ref, (a, b, v), go)
    )


def test_concatenation_all_negative_and_all_positive():
    v = torch.randn(1, 6, 3, dtype=torch.float64)
    b = torch.randn(1, 6, dtype=torch.float64)
    torch.testing.assert_close(concatenation_aggregate(torch.full((1, 4), -100.0, dtype=torch.float64), b, v), torch.zeros(1, 4, 3, dtype=torch.float64))
    a = torch.full((1, 4), 100.0, dtype=torch.float64)
    torch.testing.assert_close(concatenation_aggregate(a, b, v), naive_concatenation(a, b, v))


def test_softmax_aggregate_unequal_widths_and_large_logits():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 30, 12, generator=gen) * 40
    k = torch.randn(2, 20, 12, generator=gen) * 40
    v = torch.randn(2, 20, 5, generator=gen)
    ref = torch.softmax(q.double() @ k.double().transpose(1, 2) * 0.5, -1) @ v.double()
    out = softmax_aggregate(q, k, v, scale=0.5)
    assert out.shape == (2, 30, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    # and the other way round: values wider than queries
    v_wide = torch.randn(2, 20, 40, generator=gen)
    ref = torch.softmax(q.double() @ k.double().transpose(1, 2) * 0.5, -1) @ v_wide.double()
    torch.testing.assert_close(softmax_aggregate(q, k, v_wide, 0.5).double(), ref, rtol=1e-4, atol=1e-4)


def test_half_inputs_compute_in_float32():
    q = torch.randn(1, 8, 4).half() * 300
    k = torch.randn(1, 8, 4).half() * 300
    v = torch.randn(1, 8, 4).half() * 300
    for y in (dot_product_aggregate(q, k, v), softmax_aggregate(q, k, v, 1.0)):
        assert y.dtype == torch.float32 and torch.isfinite(y).all()
    ref = (q.double() @ (k.double().transpose(1, 2) @ v.double())) / 8
    torch.testing.assert_close(dot_product_aggregate(q, k, v).double(), ref, rtol=1e-5, atol=1e-3)
