"""Blocks on padded batches (valid_sizes): exact against masking written out on the padded map."""

import itertools

import pytest
import torch

from helpers import randomize
from nonlocal_det.layers import (
    CGNL_KERNELS,
    GC_POOLINGS,
    NONLOCAL_MODES,
    CGNLBlock2d,
    DisentangledNonLocal2d,
    GlobalContextBlock2d,
    NonLocalBlock2d,
)
from reference import reference_forward, reference_masked_forward

# image 0 unpadded, 1 and 2 padded (one of them to odd sizes, so 2x2 pooling has a
# partial cell at the valid edge), 3 the same size as 1: computed in one group with it
VALID_SIZES = [(9, 11), (5, 7), (6, 3), (5, 7)]
NORMS = ["", "GN", "BN"]


def padded_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(len(VALID_SIZES), 8, 9, 11, generator=gen, dtype=torch.float64)


def nonlocal_blocks():
    for mode, sub_sample, norm in itertools.product(NONLOCAL_MODES, (True, False), NORMS):
        yield (
            f"NL-{mode}-sub{int(sub_sample)}-{norm or 'none'}",
            lambda m=mode, s=sub_sample, n=norm: NonLocalBlock2d(8, mode=m, sub_sample=s, norm=n),
        )
    for kernel, norm in itertools.product(CGNL_KERNELS, NORMS):
        yield (
            f"CGNL-{kernel}-{norm or 'none'}",
            lambda k=kernel, n=norm: CGNLBlock2d(
                8, kernel=k, groups=2, norm=n, use_scale=True, gamma=0.05
            ),
        )
    for sub_sample, norm in itertools.product((True, False), NORMS):
        yield (
            f"DNL-sub{int(sub_sample)}-{norm or 'none'}",
            lambda s=sub_sample, n=norm: DisentangledNonLocal2d(8, sub_sample=s, norm=n),
        )
    for pooling, fusions in itertools.product(GC_POOLINGS, GC_FUSION_SETS):
        yield (
            f"GC-{pooling}-{'+'.join(fusions)}",
            lambda p=pooling, f=fusions: GlobalContextBlock2d(8, ratio=0.5, pooling=p, fusions=f),
        )


GC_FUSION_SETS = [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")]
BLOCKS = dict(nonlocal_blocks())


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_equals_masking_on_the_padded_map(name, training):
    block = randomize(BLOCKS[name]()).train(training)
    x = padded_batch()
    expected = reference_masked_forward(block, x, VALID_SIZES)
    torch.testing.assert_close(block(x, VALID_SIZES), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in BLOCKS if not n.endswith("-BN")])
def test_each_image_as_if_alone(name):
    """Without batch statistics, an image's valid region is what the block gives its crop alone."""
    block = randomize(BLOCKS[name]()).train()
    x = padded_batch()
    z = block(x, VALID_SIZES)
    for i, (h, w) in enumerate(VALID_SIZES):
        alone = reference_forward(block, x[i : i + 1, :, :h, :w])[0]
        torch.testing.assert_close(z[i, :, :h, :w], alone, rtol=1e-9, atol=1e-10)


def test_batch_norm_statistics_over_valid_positions():
    block = randomize(NonLocalBlock2d(8, norm="BN")).train()
    block.norm.reset_running_stats()
    block.norm.momentum = 1.0  # running statistics = this batch's
    x = padded_batch()
    block(x, VALID_SIZES)
    y = torch.cat(
        [
            block.transform(x[i : i + 1, :, :h, :w]).flatten(2)
            for i, (h, w) in enumerate(VALID_SIZES)
        ],
        dim=2,
    )  # (1, inner, valid positions of every image)
    branch = block.out(y[:, :, None, :])[0, :, 0]  # (C, L)
    torch.testing.assert_close(block.norm.running_mean, branch.mean(dim=1))
    torch.testing.assert_close(block.norm.running_var, branch.var(dim=1, unbiased=True))


@pytest.mark.parametrize(
    "name",
    [
        "NL-embedded_gaussian-sub1-BN",
        "NL-concatenation-sub1-GN",
        "CGNL-dot-GN",
        "DNL-sub1-BN",
        "DNL-sub0-GN",
        "GC-att-channel_add+channel_mul",
    ],
)
def test_gradients_equal_masking(name):
    block = randomize(BLOCKS[name]()).train()
    x = padded_batch().requires_grad_()
    params = [x, *block.parameters()]
    ours = torch.autograd.grad(block(x, VALID_SIZES).sin().sum(), params)
    ref = torch.autograd.grad(reference_masked_forward(block, x, VALID_SIZES).sin().sum(), params)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    "name",
    ["NL-dot_product-sub1-GN", "CGNL-embedded_gaussian-BN", "DNL-sub1-GN", "GC-att-channel_add"],
)
def test_padded_positions_pass_the_input_through(name):
    block = randomize(BLOCKS[name]()).train()
    x = padded_batch()
    x[1, :, 5:, :] = float("inf")  # whatever lies in the padding never reaches a valid position
    z = block(x, VALID_SIZES)
    assert torch.isfinite(z[1, :, :5, :7]).all()
    assert torch.equal(z[2, :, 6:], x[2, :, 6:]) and torch.equal(z[2, :, :, 3:], x[2, :, :, 3:])


@pytest.mark.parametrize(
    "name",
    [
        "NL-gaussian-sub1-BN",
        "NL-embedded_gaussian-sub1-GN",
        "CGNL-dot-BN",
        "DNL-sub1-BN",
        "GC-att-channel_add",
    ],
)
def test_unpadded_batch_computes_exactly_as_without_sizes(name):
    block = randomize(BLOCKS[name]()).float().train()
    x = padded_batch().float()
    full = [tuple(x.shape[-2:])] * x.shape[0]
    assert torch.equal(block(x, full), block(x))
    assert torch.equal(block(x, torch.tensor(full)), block(x))


@pytest.mark.parametrize(
    "sizes,words",
    [
        ([(9, 11)] * 3, r"one \(height, width\) pair per image of the batch \(4\)"),
        (
            [(9, 11), (5, 7), (6, 3), (10, 7)],
            r"valid size \(10, 7\) of image 3 does not fit its 9x11 grid",
        ),
        ([(9, 11), (5, 7), (6, 3), (0, 7)], r"valid size \(0, 7\) of image 3"),
    ],
)
def test_bad_valid_sizes(sizes, words):
    with pytest.raises(ValueError, match=words):
        NonLocalBlock2d(8)(padded_batch().float(), sizes)
