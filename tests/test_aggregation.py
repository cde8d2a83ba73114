import pytest
import torch
import torch.nn.functional as F

from nonlocal_det.layers.aggregation import (
    concatenation_aggregate,
    dot_product_aggregate,
    explicit_matrix_fits,
    softmax_aggregate,
)

# Channel-major: q (B, D, N), k (B, D, M), v (B, Dv, M) -> y (B, Dv, N).


def naive_softmax(q, k, v, scale):
    weights = torch.softmax(scale * torch.einsum("bdn,bdm->bnm", q.double(), k.double()), dim=-1)
    return torch.einsum("bnm,bcm->bcn", weights, v.double())


def naive_concatenation(a, b, v):
    weights = F.relu(a[:, :, None] + b[:, None, :])  # (B, N, M)
    return torch.einsum("bnm,bcm->bcn", weights, v) / b.shape[1]


def test_concatenation_with_ties_and_exact_zeros():
    # Integer-valued a, b make many a_i + b_j exactly 0 and many b_j equal.
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-3, 4, (2, 50), generator=gen).double().requires_grad_()
    b = torch.randint(-3, 4, (2, 40), generator=gen).double().requires_grad_()
    v = torch.randn(2, 5, 40, dtype=torch.float64, generator=gen).requires_grad_()
    ours = concatenation_aggregate(a, b, v)
    ref = naive_concatenation(a, b, v)
    torch.testing.assert_close(ours, ref)
    go = torch.randn_like(ours)
    torch.testing.assert_close(
        torch.autograd.grad(ours, (a, b, v), go), torch.autograd.grad(ref, (a, b, v), go)
    )


def test_concatenation_all_negative_and_all_positive():
    v = torch.randn(1, 3, 6, dtype=torch.float64)
    b = torch.randn(1, 6, dtype=torch.float64)
    negative = torch.full((1, 4), -100.0, dtype=torch.float64)
    torch.testing.assert_close(
        concatenation_aggregate(negative, b, v), torch.zeros(1, 3, 4, dtype=torch.float64)
    )
    positive = torch.full((1, 4), 100.0, dtype=torch.float64)
    torch.testing.assert_close(
        concatenation_aggregate(positive, b, v), naive_concatenation(positive, b, v)
    )


@pytest.mark.parametrize("n,m", [(30, 20), (300, 200)])
@pytest.mark.parametrize("dv", [5, 40])
def test_softmax_aggregate_both_paths_unequal_widths_large_logits(n, m, dv):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 12, n, generator=gen) * 40
    k = torch.randn(2, 12, m, generator=gen) * 40
    v = torch.randn(2, dv, m, generator=gen)
    out = softmax_aggregate(q, k, v, scale=0.5)
    assert out.shape == (2, dv, n) and out.dtype == torch.float32
    # logits ~3e3: float32 rounding of a logit alone moves a weight by ~3e-4
    torch.testing.assert_close(out.double(), naive_softmax(q, k, v, 0.5), rtol=2e-3, atol=2e-3)


def test_explicit_matrix_only_when_no_larger_than_inputs():
    q, k, v = torch.zeros(1, 12, 30), torch.zeros(1, 12, 20), torch.zeros(1, 5, 20)
    assert explicit_matrix_fits(q, k, v)  # 600 <= 2 * (360 + 240 + 100)
    q, k, v = torch.zeros(1, 12, 100), torch.zeros(1, 12, 100), torch.zeros(1, 5, 100)
    assert not explicit_matrix_fits(q, k, v)  # 10000 > 2 * 2900
    assert not explicit_matrix_fits(q, k, v)


def test_half_inputs_compute_in_float32():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 8, generator=gen).half() * 300 for _ in range(3))
    for y in (dot_product_aggregate(q, k, v), softmax_aggregate(q, k, v, 1.0)):
        assert y.dtype == torch.float32 and torch.isfinite(y).all()
    ref = torch.einsum("bdn,bdm,bcm->bcn", q.double(), k.double(), v.double()) / 8
    err = (dot_product_aggregate(q, k, v).double() - ref).abs().max()
    assert err <= 1e-6 * ref.abs().max()  # float32 accuracy; float16 would overflow (~1e7)
