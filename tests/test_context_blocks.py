"""GC and DNL blocks against their formulas written out (tests/reference.py)."""

import math

import pytest
import torch

from helpers import randomize
from nonlocal_det.harness.analysis.attention import query_maps, query_specificity
from nonlocal_det.layers import (
    GC_POOLINGS,
    DisentangledNonLocal2d,
    GlobalContextBlock2d,
)
from reference import (
    pairwise_matrix,
    reference_dnl_op,
    reference_forward,
)

FUSION_SETS = [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")]
SIZES = [(7, 9), (8, 8), (1, 5)]


def _x(shape, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return x.requires_grad_(requires_grad)


def _assert_same_forward_and_gradients(block, x):
    params = [x, *block.parameters()]
    ours = block(x)
    ref = reference_forward(block, x)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)
    grads = torch.autograd.grad(ours.sin().sum(), params)
    ref_grads = torch.autograd.grad(ref.sin().sum(), params)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("fusions", FUSION_SETS, ids="+".join)
@pytest.mark.parametrize("pooling", GC_POOLINGS)
def test_gc_equals_its_formula_with_gradients(pooling, fusions, size):
    block = randomize(GlobalContextBlock2d(16, ratio=0.25, pooling=pooling, fusions=fusions))
    _assert_same_forward_and_gradients(block.train(), _x((3, 16, *size), requires_grad=True))


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("norm", ["", "GN", "BN"])
@pytest.mark.parametrize("sub_sample", [True, False])
def test_dnl_equals_its_formula_with_gradients(sub_sample, norm, size):
    block = DisentangledNonLocal2d(16, sub_sample=sub_sample, norm=norm, temperature=0.5)
    block = randomize(block).train()
    _assert_same_forward_and_gradients(block, _x((3, 16, *size), requires_grad=True))


@torch.no_grad()
def test_dnl_formula_is_the_papers():
    """The reference's whitening, temperature and unary term, against eq. 13 by hand."""
    block = randomize(DisentangledNonLocal2d(4, sub_sample=False, norm="", temperature=0.3))
    x = _x((1, 4, 3, 2))
    q, k, v = (m(x).flatten(2)[0] for m in (block.theta, block.phi, block.g))  # (D, 6)
    q, k = q - q.mean(1, keepdim=True), k - k.mean(1, keepdim=True)
    m = block.conv_mask(x).flatten()
    expected = torch.zeros(2, 6, dtype=torch.float64)
    for i in range(6):
        logits = torch.tensor([float(q[:, i] @ k[:, j]) for j in range(6)]) / (2**0.5 * 0.3)
        w = torch.softmax(logits.double(), 0) + torch.softmax(m, 0)
        expected[:, i] = (v * w).sum(1)
    torch.testing.assert_close(reference_dnl_op(block, x)[0].flatten(1), expected)


def test_gc_starts_as_identity_with_add_and_halves_with_mul():
    x = torch.randn(2, 32, 6, 5)
    assert torch.equal(GlobalContextBlock2d(32)(x), x)
    both = GlobalContextBlock2d(32, fusions=("channel_add", "channel_mul"))
    assert torch.equal(both(x), x * 0.5)  # x * sigmoid(0), mmcv's ContextBlock at init


@pytest.mark.parametrize("norm", ["", "GN", "BN"])
def test_dnl_starts_as_identity(norm):
    x = torch.randn(2, 32, 6, 5)
    assert torch.equal(DisentangledNonLocal2d(32, norm=norm).eval()(x), x)


@pytest.mark.parametrize("init", ["small", "standard"])
def test_nonzero_init_gives_every_gc_parameter_a_gradient(init):
    block = GlobalContextBlock2d(16, ratio=0.25, fusions=("channel_add", "channel_mul"), init=init)
    block(torch.randn(2, 16, 5, 6)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_checkpoint_keys_are_mmcvs_and_ours():
    gc = GlobalContextBlock2d(32, fusions=("channel_add", "channel_mul"))
    assert sorted({k.rsplit(".", 1)[0] for k in gc.state_dict()}) == [
        "channel_add_conv.0",
        "channel_add_conv.1",
        "channel_add_conv.3",
        "channel_mul_conv.0",
        "channel_mul_conv.1",
        "channel_mul_conv.3",
        "conv_mask",
    ]
    assert "conv_mask" not in dict(GlobalContextBlock2d(32, pooling="avg").named_children())
    dnl = DisentangledNonLocal2d(32, norm="GN")
    assert sorted(dict(dnl.named_children())) == ["conv_mask", "g", "norm", "out", "phi", "theta"]


def test_gc_attention_is_query_independent():
    """GCNet's attention map is one per image: query specificity is exactly 0."""
    block = randomize(GlobalContextBlock2d(16, ratio=0.25)).float()
    x = torch.randn(1, 16, 6, 7)
    maps = query_maps(block, x)
    assert maps.shape == (42, 42)
    assert query_specificity(maps) == 0.0
    torch.testing.assert_close(maps[0], block.pooling_weights(x)[0].double())


def test_dnl_attention_for_queries_is_pairwise_plus_unary():
    block = randomize(DisentangledNonLocal2d(8, sub_sample=True, norm=""))
    x = _x((2, 8, 5, 6))
    queries = torch.tensor([[0, 0], [4, 5], [2, 3]])
    weights = block.attention_for_queries(x, queries)  # (B, Q, 3, 3)
    q, k, _ = block.embed(x)
    pair = pairwise_matrix(block, q.flatten(2), k.flatten(2))  # embedded Gaussian, scale s
    pair = torch.softmax(torch.log(pair) / block.temperature, dim=-1)  # softmax(s/T q.k)
    flat = queries[:, 0] * 6 + queries[:, 1]
    expected = pair[:, flat] + block.unary_weights(x)[:, None, :]
    torch.testing.assert_close(weights.flatten(2), expected)
    torch.testing.assert_close(weights.sum(dim=(2, 3)), torch.full((2, 3), 2.0, dtype=x.dtype))


@pytest.mark.parametrize(
    "make,exc,words",
    [
        (lambda: GlobalContextBlock2d(16, ratio=0.01), ValueError, "0 bottleneck channels"),
        (lambda: GlobalContextBlock2d(16, pooling="max"), ValueError, "pooling='max'"),
        (lambda: GlobalContextBlock2d(16, fusions=()), ValueError, "non-empty subset"),
        (lambda: GlobalContextBlock2d(16, fusions=("add",)), ValueError, "non-empty subset"),
        (lambda: GlobalContextBlock2d(16, init="zero"), ValueError, "init='zero'"),
        (lambda: DisentangledNonLocal2d(16, temperature=0), ValueError, "temperature must be"),
        (lambda: DisentangledNonLocal2d(16, temperature="1"), TypeError, "temperature must be"),
        (lambda: DisentangledNonLocal2d(15), ValueError, "reduction=2 must divide"),
    ],
)
def test_bad_construction(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


@pytest.mark.parametrize("block", ["GC", "DNL"])
def test_bad_input_named(block):
    module = GlobalContextBlock2d(16) if block == "GC" else DisentangledNonLocal2d(16)
    with pytest.raises(ValueError, match="built for 16 input channels, got 8"):
        module(torch.randn(1, 8, 4, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["GC", "DNL"])
def test_autocast_keeps_the_attention_in_float32(kind, dtype):
    torch.manual_seed(0)
    block = GlobalContextBlock2d(16, init="standard") if kind == "GC" else None
    block = block or DisentangledNonLocal2d(16, norm="GN", init="standard")
    x = torch.randn(2, 16, 6, 6) * 300
    with torch.autocast("cpu", dtype=dtype):
        z = block(x)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z.float(), block(x), rtol=2e-2, atol=2e-2 * 300)


@pytest.mark.slow
def test_dnl_memory_at_64x200x200_under_one_gib():
    """Forward+backward at 64 x 200 x 200 (N = 40000, M = 10000): the NL blocks' 1 GiB bar."""
    from nonlocal_det.harness.utils.measure import cpu_peak_bytes

    torch.manual_seed(0)
    block = DisentangledNonLocal2d(64, norm="BN", init="standard")
    x = torch.randn(1, 64, 200, 200, requires_grad=True)
    peak = cpu_peak_bytes(lambda: block(x).square().mean().backward())
    matrix = 40000 * 10000 * 4
    assert peak < 2**30, f"{peak / 2**20:.0f} MiB"
    assert peak < matrix / 2


@pytest.mark.parametrize("kind", ["GC", "DNL"])
def test_empty_batch(kind):
    block = GlobalContextBlock2d(16) if kind == "GC" else DisentangledNonLocal2d(16)
    assert block(torch.zeros(0, 16, 4, 5)).shape == (0, 16, 4, 5)


@pytest.mark.parametrize("fusions", [("channel_add",), ("channel_add", "channel_mul")])
def test_fvcore_counts_gc_as_its_formula(fusions):
    """conv_mask and the pooling (C N each), per fusion two bottleneck convs (2 C C/r) and the
    LayerNorm (5 C/r), per image."""
    from fvcore.nn import FlopCountAnalysis

    from nonlocal_det.harness.analysis.model_costs import counted_our_way

    batch, c, h, w, bottleneck = 2, 64, 13, 11, 16  # counts fvcore's einsum would round
    block = GlobalContextBlock2d(c, ratio=bottleneck / c, fusions=fusions).eval()
    count = counted_our_way(FlopCountAnalysis(block, torch.randn(batch, c, h, w)))
    per_fusion = 2 * c * bottleneck + 5 * bottleneck
    assert count.total() == batch * (2 * c * h * w + len(fusions) * per_fusion)


@pytest.mark.parametrize("sub_sample", [True, False])
def test_fvcore_counts_dnl_as_its_formula(sub_sample):
    """W_theta, W_phi, W_g, W_z (2 C^2 N), the unary logits (C N) and pooling (C/2 M), the
    pairwise products (N M C) and GroupNorm (5 C N), per image; with sub-sampling M is the key
    grid of each side halved, rounded up."""
    from fvcore.nn import FlopCountAnalysis

    from nonlocal_det.harness.analysis.model_costs import counted_our_way

    batch, c, h, w = 2, 64, 13, 11  # counts fvcore's einsum would round
    n = h * w
    m = math.ceil(h / 2) * math.ceil(w / 2) if sub_sample else n
    block = DisentangledNonLocal2d(c, sub_sample=sub_sample, norm="GN").eval()
    count = counted_our_way(FlopCountAnalysis(block, torch.randn(batch, c, h, w)))
    expected = 2 * c * c * n + c * n + c // 2 * m + n * m * c + 5 * c * n
    assert count.total() == batch * expected
