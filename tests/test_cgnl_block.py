import itertools

import pytest
import torch
from torch import nn

from helpers import randomize
from nonlocal_det.layers import CGNL_KERNELS, CGNLBlock2d
from nonlocal_det.layers.cgnl_block import taylor_coefficients
from reference import reference_cgnl_op, reference_forward


@pytest.mark.parametrize(
    "kernel,order,groups,use_scale,size",
    [
        (k, o, g, s, hw)
        for k, o, g, s, hw in itertools.product(
            CGNL_KERNELS, (0, 1, 3), (1, 4), (False, True), ((5, 7), (1, 1))
        )
        if not (k == "dot" and o != 3)
    ],
)
def test_matches_full_matrix_reference(kernel, order, groups, use_scale, size):
    block = randomize(
        CGNLBlock2d(16, kernel=kernel, groups=groups, order=order, use_scale=use_scale, gamma=0.05)
    )
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    torch.testing.assert_close(
        block.transform(x), reference_cgnl_op(block, x), rtol=1e-9, atol=1e-10
    )
    torch.testing.assert_close(block(x), reference_forward(block, x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kernel", ["embedded_gaussian", "gaussian_rbf"])
def test_taylor_expansion_converges_to_the_kernel(kernel):
    """High-order expansion approaches the closed-form kernel (checks the coefficients)."""
    gamma = 0.3
    t = torch.linspace(-1.5, 1.5, 31, dtype=torch.float64)
    tt, pp = torch.meshgrid(t, t, indexing="ij")
    coeffs = taylor_coefficients(kernel, 30, gamma)
    series = sum(c * (tt * pp) ** p for p, c in enumerate(coeffs))
    if kernel == "embedded_gaussian":
        exact = torch.exp(tt * pp)
    else:
        series = series * torch.exp(-gamma * (tt**2 + pp**2))
        exact = torch.exp(-gamma * (tt - pp) ** 2)
    torch.testing.assert_close(series, exact)


def test_groups_are_independent():
    """Changing one group's theta/phi/g inputs changes only that group's Y'."""
    block = randomize(CGNLBlock2d(8, groups=4, kernel="embedded_gaussian", reduction=1))
    with torch.no_grad():  # block-diagonal embeddings: group k reads only input channels 2k, 2k+1
        for conv in (block.theta, block.phi, block.g):
            mask = torch.block_diag(*[torch.ones(2, 2, dtype=torch.float64)] * 4)
            conv.weight.mul_(mask[:, :, None, None])
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 0:2] += 1.0
    changed = (block.transform(x) - block.transform(x2)).abs().amax(dim=(0, 2, 3))
    assert (changed[0:2] > 0).all() and (changed[2:] == 0).all()


@pytest.mark.parametrize("kernel", CGNL_KERNELS)
@pytest.mark.parametrize("norm", ["", "BN", "GN", "SyncBN", lambda c: nn.GroupNorm(4, c)])
def test_identity_at_init(kernel, norm):
    torch.manual_seed(0)
    block = CGNLBlock2d(32, kernel=kernel, norm=norm)
    x = torch.randn(2, 32, 9, 7) * 5
    assert torch.equal(block.train()(x), x)
    assert torch.equal(block.eval()(x), x)


def test_gn_normalises_per_group():
    block = CGNLBlock2d(32, groups=8)
    assert isinstance(block.norm, nn.GroupNorm) and block.norm.num_groups == 8
    assert block.out.groups == 8


@pytest.mark.parametrize("kernel", CGNL_KERNELS)
def test_gradients_reach_every_parameter(kernel):
    torch.manual_seed(0)
    block = CGNLBlock2d(16, kernel=kernel, groups=4)
    x = torch.randn(2, 16, 5, 6, requires_grad=True)
    block(x).square().sum().backward()
    assert block.norm.weight.grad.abs().sum() > 0
    with torch.no_grad():
        block.norm.weight.fill_(0.5)
    block.zero_grad()
    block(x).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kernel", CGNL_KERNELS)
@pytest.mark.parametrize("norm", ["", "BN", "GN"])
@pytest.mark.parametrize("init", ["small", "standard"])
def test_nonzero_init_trains_every_parameter_from_step_one(kernel, norm, init):
    torch.manual_seed(0)
    block = CGNLBlock2d(16, kernel=kernel, groups=4, norm=norm, init=init)
    x = torch.randn(2, 16, 5, 6)
    branch = block.train()(x) - x
    assert branch.abs().max() > 0
    block(x).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_empty_batch():
    block = CGNLBlock2d(16, groups=4, norm="BN")
    x = torch.zeros(0, 16, 5, 5, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.sum().backward()


@pytest.mark.parametrize(
    "kwargs,exc,words",
    [
        ({"kernel": "rbf"}, ValueError, "Unknown CGNL kernel 'rbf'"),
        ({"groups": 3}, ValueError, "groups=3 must divide inner channels"),
        ({"groups": 32}, ValueError, "groups=32 must divide inner channels"),
        ({"reduction": 5}, ValueError, "reduction=5 must divide in_channels=16"),
        ({"order": -1}, ValueError, r"order must be an int in \[0, 33\]"),
        ({"gamma": 0.0}, ValueError, "gamma must be > 0"),
        ({"norm": "FrozenBN"}, ValueError, "frozen"),
    ],
)
def test_bad_construction(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        CGNLBlock2d(16, **kwargs)


def test_bad_inputs():
    block = CGNLBlock2d(16, groups=4)
    with pytest.raises(ValueError, match="16 input channels, got 8"):
        block(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="4-D input"):
        block(torch.randn(16, 4, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel", CGNL_KERNELS)
def test_autocast_large_activations_stay_finite(kernel, dtype):
    torch.manual_seed(0)
    block = CGNLBlock2d(64, kernel=kernel, groups=4, norm="GN")
    with torch.no_grad():
        block.norm.weight.fill_(1.0)
    x = torch.randn(2, 64, 12, 10) * 60
    with torch.no_grad():
        reference = block(x)
    with torch.autocast("cpu", dtype=dtype):
        y = block(x)
    assert torch.isfinite(reference).all() and torch.isfinite(y).all()
    assert ((y.float() - reference).norm() / reference.norm()) < 3e-2


@pytest.mark.parametrize("kernel", CGNL_KERNELS)
def test_memory_is_linear_in_elements(kernel):
    """forward+backward never allocates anything near one group's (N C')^2 kernel matrix."""
    from torch.profiler import ProfilerActivity, profile

    block = CGNLBlock2d(16, kernel=kernel, groups=2)
    with torch.no_grad():
        block.norm.weight.fill_(1.0)
    x = torch.randn(1, 16, 64, 64, requires_grad=True)
    elements = 64 * 64 * 4  # N * C' per group
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        block(x).sum().backward()
    largest = max(e.cpu_memory_usage for e in prof.events())
    assert largest <= 4 * 16 * 64 * 64 * 4, (
        f"largest allocation {largest / 1e6:.1f} MB vs {elements}^2 matrix"
    )


@pytest.mark.parametrize("kernel", ["dot", "embedded_gaussian"])
def test_half_precision_block_is_finite(kernel):
    """A block converted with .half(): the group sums of a res4-sized map reach 1e6-1e10, beyond
    float16; W_z and the norm take them in float32 and return float16."""
    torch.manual_seed(0)
    block = CGNLBlock2d(64, kernel=kernel).half()
    x = (3 * torch.randn(1, 64, 50, 84)).half()
    assert block.transform(x).abs().max() > 1e6
    assert torch.equal(block(x), x)  # still exactly the identity at initialisation
    with torch.no_grad():
        block.norm.weight.fill_(0.5)
    for z in (block(x), block(x, valid_sizes=[(30, 84)])):
        assert z.dtype == torch.float16 and torch.isfinite(z).all()


def test_the_order_is_bounded_by_float32_and_an_overflow_is_named():
    from nonlocal_det.errors import ConfigError
    from nonlocal_det.layers.cgnl_block import max_taylor_order

    # 1/P! is a normal number up to these orders: the domain of ``order`` follows from the dtype
    assert [max_taylor_order(d) for d in (torch.float16, torch.float32, torch.float64)] == [
        7,
        33,
        170,
    ]
    with pytest.raises(ValueError, match=r"order must be an int in \[0, 33\]"):
        CGNLBlock2d(16, kernel="embedded_gaussian", groups=2, order=40)
    block = CGNLBlock2d(
        16, kernel="embedded_gaussian", groups=2, order=20, norm="", init="standard"
    )
    x = 30 * torch.randn(1, 16, 6, 6, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="order=20.*overflowed torch.float32.*at most"):
        block(x)
    assert torch.isfinite(block(x / 30)).all()  # the same block on unit-scale features
