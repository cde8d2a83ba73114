import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import randomize
from nonlocal_det.layers import NONLOCAL_MODES, NonLocalBlock2d
from reference import (
    pairwise_matrix,
    reference_embed,
    reference_forward,
    reference_nonlocal_op,
)

SIZES = [(6, 8), (7, 5), (1, 1), (1, 6), (3, 1)]


@pytest.mark.parametrize(
    "mode,sub_sample,size", list(itertools.product(NONLOCAL_MODES, (True, False), SIZES))
)
def test_matches_full_matrix_reference(mode, sub_sample, size):
    block = randomize(NonLocalBlock2d(8, mode=mode, sub_sample=sub_sample, norm="GN"))
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    torch.testing.assert_close(
        block.transform(x), reference_nonlocal_op(block, x), rtol=1e-9, atol=1e-10
    )
    torch.testing.assert_close(block(x), reference_forward(block, x), rtol=1e-9, atol=1e-10)


def test_reference_is_the_papers_formula():
    """The reference itself, checked against eq. 1 written as explicit loops."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    for mode in NONLOCAL_MODES:
        block = randomize(NonLocalBlock2d(4, mode=mode, sub_sample=False, use_scale=False, norm=""))
        X = x[0].flatten(1).T  # (N, C)
        G = block.g(x)[0].flatten(1).T
        if mode != "gaussian":
            T, P = block.theta(x)[0].flatten(1).T, block.phi(x)[0].flatten(1).T
        n = X.shape[0]
        y = torch.zeros(n, block.inner_channels, dtype=torch.float64)
        for i in range(n):
            if mode == "gaussian":
                f = torch.stack([torch.exp(X[i] @ X[j]) for j in range(n)])
                c = f.sum()
            elif mode == "embedded_gaussian":
                f = torch.stack([torch.exp(T[i] @ P[j]) for j in range(n)])
                c = f.sum()
            elif mode == "dot_product":
                f = torch.stack([T[i] @ P[j] for j in range(n)])
                c = n
            else:
                w = block.concat_project.weight.flatten()
                f = torch.stack([torch.relu(w @ torch.cat([T[i], P[j]])) for j in range(n)])
                c = n
            y[i] = (f[:, None] * G).sum(0) / c
        torch.testing.assert_close(reference_nonlocal_op(block, x)[0].flatten(1).T, y)
        torch.testing.assert_close(block.transform(x)[0].flatten(1).T, y)


def test_odd_sizes_pool_last_row_and_column():
    block = NonLocalBlock2d(4, mode="dot_product", norm="")
    x = torch.zeros(1, 4, 5, 3)
    x[0, :, 4, 2] = 1.0  # only the last (odd) row/column is non-zero
    queries, keys, values = block.embed(x)
    assert keys.shape[-2:] == values.shape[-2:] == (3, 2)
    pooled = F.max_pool2d(block.phi(x), 2, 2, ceil_mode=True)
    torch.testing.assert_close(keys, pooled)
    assert keys[0, :, 2, 1].ne(keys[0, :, 0, 0]).any(), "last row/column must reach the keys"


@pytest.mark.parametrize("mode", NONLOCAL_MODES)
@pytest.mark.parametrize(
    "norm", ["", "BN", "GN", "SyncBN", lambda c: nn.GroupNorm(2, c), lambda c: nn.BatchNorm2d(c)]
)
def test_identity_at_init(mode, norm):
    torch.manual_seed(0)
    block = NonLocalBlock2d(16, mode=mode, norm=norm)
    for x in (torch.randn(2, 16, 9, 7) * 5, torch.randn(3, 16, 4, 4)):
        assert torch.equal(block.train()(x), x)
        assert torch.equal(block.eval()(x), x)


@pytest.mark.parametrize("mode", NONLOCAL_MODES)
def test_gradients_reach_every_parameter(mode):
    torch.manual_seed(0)
    block = NonLocalBlock2d(8, mode=mode, norm="GN")
    x = torch.randn(2, 8, 6, 5, requires_grad=True)
    # At init only the zeroed norm affine gets a gradient (everything upstream is scaled by 0).
    block(x).square().sum().backward()
    assert block.norm.weight.grad.abs().sum() > 0
    # Once that weight has moved, gradients reach every parameter.
    with torch.no_grad():
        block.norm.weight.fill_(0.5)
    block.zero_grad()
    x.grad = None
    block(x).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", NONLOCAL_MODES)
@pytest.mark.parametrize("norm", ["", "BN", "GN"])
@pytest.mark.parametrize("init,scale", [("small", 0.1), ("standard", 1.0)])
def test_nonzero_init_trains_every_parameter_from_step_one(mode, norm, init, scale):
    torch.manual_seed(0)
    block = NonLocalBlock2d(64, mode=mode, norm=norm, init=init)
    if norm:
        assert torch.equal(block.norm.weight, torch.full((64,), scale))
        assert torch.equal(block.norm.bias, torch.zeros(64))
    else:
        # the MSRA draw times the scale: std scale * sqrt(2 / fan_out), fan_out = 64
        assert torch.equal(block.out.bias, torch.zeros(64))
        assert abs(block.out.weight.std().item() / (scale * (2 / 64) ** 0.5) - 1) < 0.1
    x = torch.randn(2, 64, 6, 5)
    branch = block.train()(x) - x
    assert branch.abs().max() > 0
    if norm:  # normalised values times the scale
        assert branch.norm() < 1.5 * scale * branch.numel() ** 0.5
    block(x).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_unknown_init_refused():
    with pytest.raises(ValueError, match="init='zero' is not one of"):
        NonLocalBlock2d(8, init="zero")


@pytest.mark.parametrize("mode", NONLOCAL_MODES)
def test_backward_matches_reference(mode):
    block = randomize(NonLocalBlock2d(6, mode=mode, norm=""))
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64, requires_grad=True)
    ours = torch.autograd.grad(block(x).sin().sum(), [x, *block.parameters()])
    ref = torch.autograd.grad(reference_forward(block, x).sin().sum(), [x, *block.parameters()])
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", NONLOCAL_MODES)
def test_empty_batch(mode):
    block = NonLocalBlock2d(8, mode=mode, norm="BN")
    x = torch.zeros(0, 8, 5, 5, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.sum().backward()
    for p in block.parameters():
        assert p.grad is not None


def test_no_theta_phi_in_gaussian_mode_and_checkpoint_names():
    names = {
        m: {k.split(".")[0] for k in NonLocalBlock2d(8, mode=m).state_dict()}
        for m in NONLOCAL_MODES
    }
    assert names["gaussian"] == {"g", "out", "norm"}
    assert (
        names["embedded_gaussian"] == names["dot_product"] == {"theta", "phi", "g", "out", "norm"}
    )
    assert names["concatenation"] == {"theta", "phi", "g", "concat_project", "out", "norm"}
    assert "out.bias" not in NonLocalBlock2d(8).state_dict()
    assert "out.bias" in NonLocalBlock2d(8, norm="").state_dict()


@pytest.mark.parametrize(
    "kwargs,x,exc,words",
    [
        ({}, torch.randn(1, 4, 5, 5), ValueError, "8 input channels, got 4"),
        ({}, torch.randn(8, 5, 5), ValueError, "4-D input"),
        ({}, torch.randn(1, 8, 2, 5, 5), ValueError, "4-D input"),
        ({}, torch.ones(1, 8, 5, 5, dtype=torch.long), TypeError, "floating-point"),
        ({}, [[1.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs(kwargs, x, exc, words):
    with pytest.raises(exc, match=words):
        NonLocalBlock2d(8, **kwargs)(x)


@pytest.mark.parametrize(
    "kwargs,exc,words",
    [
        ({"mode": "softmax"}, ValueError, "Unknown non-local mode 'softmax'.*embedded_gaussian"),
        ({"reduction": 3}, ValueError, "reduction=3 must divide in_channels=8"),
        ({"reduction": 0}, ValueError, "reduction must be positive"),
        ({"reduction": 2.0}, TypeError, "reduction must be an int"),
        ({"norm": "LN"}, ValueError, "Unknown norm 'LN'"),
        ({"norm": "FrozenBN"}, ValueError, "frozen"),
        (
            {"norm": lambda c: nn.BatchNorm2d(c, affine=False)},
            ValueError,
            "no trainable affine weight",
        ),
        ({"norm": lambda c: nn.Identity()}, ValueError, "no trainable affine weight"),
        ({"norm": lambda c: "BN"}, TypeError, "must return an nn.Module"),
        ({"norm": 3}, TypeError, "norm must be a str or a callable"),
    ],
)
def test_bad_construction(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        NonLocalBlock2d(8, **kwargs)


def test_frozen_norm_module_refused():
    def frozen_bn(c):
        bn = nn.BatchNorm2d(c)
        bn.weight.requires_grad_(False)
        return bn

    with pytest.raises(ValueError, match="no trainable affine weight"):
        NonLocalBlock2d(8, norm=frozen_bn)


@pytest.mark.parametrize("mode", NONLOCAL_MODES)
@pytest.mark.parametrize("sub_sample", [True, False])
def test_attention_for_queries_matches_full_matrix(mode, sub_sample):
    block = randomize(NonLocalBlock2d(8, mode=mode, sub_sample=sub_sample))
    x = torch.randn(2, 8, 7, 6, dtype=torch.float64)
    queries = torch.tensor([[0, 0], [6, 5], [3, 2]])
    weights = block.attention_for_queries(x, queries)
    key_h, key_w = (4, 3) if sub_sample else (7, 6)
    assert weights.shape == (2, 3, key_h, key_w)
    full = pairwise_matrix(block, *reference_embed(block, x)[:2])  # (B, N, M)
    expected = full[:, queries[:, 0] * 6 + queries[:, 1]]
    torch.testing.assert_close(weights.flatten(2), expected)
    if mode in ("gaussian", "embedded_gaussian"):
        torch.testing.assert_close(weights.sum((-1, -2)), torch.ones(2, 3, dtype=torch.float64))


def test_attention_for_queries_bad_queries():
    block = NonLocalBlock2d(8)
    x = torch.randn(1, 8, 4, 4)
    with pytest.raises(ValueError, match="inside the 4x4 input grid"):
        block.attention_for_queries(x, torch.tensor([[4, 0]]))
    with pytest.raises(ValueError, match=r"shape \(Q, 2\)"):
        block.attention_for_queries(x, torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", NONLOCAL_MODES)
def test_autocast_large_activations_stay_finite(mode, dtype):
    torch.manual_seed(0)
    block = NonLocalBlock2d(64, mode=mode, norm="GN")
    with torch.no_grad():
        block.norm.weight.fill_(1.0)
    # theta . phi logits reach ~1e6 here, beyond float16's range (65504).
    x = torch.randn(2, 64, 12, 10) * 60
    with torch.no_grad():
        reference = block(x)
    with torch.autocast("cpu", dtype=dtype):
        y = block(x)
    assert torch.isfinite(y).all()
    y32 = y.float()
    # Half-precision convs cost ~3 significant digits, nothing more.
    err = (y32 - reference).norm() / reference.norm()
    assert err < 3e-2, err
    logits = (
        torch.einsum("bdn,bdm->bnm", block.theta(x).flatten(2), block.phi(x).flatten(2))
        if mode != "gaussian"
        else None
    )
    if logits is not None:
        assert logits.abs().max() > 65504


@pytest.mark.parametrize("mode", NONLOCAL_MODES)
def test_memory_is_linear_in_positions(mode):
    """No allocation in forward+backward approaches the N x M matrix."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    block = NonLocalBlock2d(16, mode=mode, norm="GN")
    with torch.no_grad():
        block.norm.weight.fill_(1.0)
    x = torch.randn(1, 16, 96, 96, requires_grad=True)
    matrix_bytes = (96 * 96) * (48 * 48) * 4  # N x M float32: 85 MB
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        block(x).sum().backward()
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert largest < matrix_bytes / 8, f"largest allocation {largest / 1e6:.1f} MB"


@pytest.mark.parametrize(
    "x,sizes,error,words",
    [
        (torch.randn(1, 8, 5, 5, dtype=torch.float16), None, TypeError, "float32 parameters"),
        (torch.randn(1, 8, 5, 5, dtype=torch.float64), None, TypeError, "float64 input"),
        (torch.randn(1, 8, 0, 5), None, ValueError, "an empty map"),
        (torch.randn(2, 8, 5, 5), [(4.9, 5), (5, 5)], ValueError, "is not two ints"),
    ],
)
def test_inputs_a_block_cannot_take_are_named(x, sizes, error, words):
    with pytest.raises(error, match=words):
        NonLocalBlock2d(8)(x, sizes)
