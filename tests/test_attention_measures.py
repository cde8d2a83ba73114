"""harness.analysis.attention: query specificity and cue mass on maps and tiny blocks."""

import math

import pytest
import torch

from nonlocal_det.harness.analysis.attention import (
    cue_mass,
    partner_mass,
    pooled,
    query_maps,
    query_specificity,
)
from nonlocal_det.layers import NonLocalBlock2d


def test_specificity_of_identical_and_disjoint_maps():
    assert query_specificity(torch.full((5, 8), 1 / 8)) == pytest.approx(0.0, abs=1e-12)
    assert query_specificity(torch.eye(6)) == pytest.approx(1.0, abs=1e-12)
    # two maps with half of their mass shared: JS = 0.5 bit
    half = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    assert query_specificity(half) == pytest.approx(0.5, abs=1e-12)
    assert math.isnan(query_specificity(torch.ones(1, 4) / 4))  # no pair


def test_uniform_attention_block_has_specificity_zero():
    block = NonLocalBlock2d(8, mode="embedded_gaussian", norm="")
    with torch.no_grad():
        block.theta.weight.zero_()
        block.theta.bias.zero_()
    maps = query_maps(block, torch.randn(1, 8, 6, 5))
    assert maps.shape == (30, 9)
    assert query_specificity(maps) == pytest.approx(0.0, abs=1e-9)
    assert cue_mass(maps, torch.arange(9) < 3)["mass"] == pytest.approx(3 / 9)


def test_queries_attending_to_disjoint_keys_have_maximal_specificity():
    """Gaussian mode, no sub-sampling, one-hot features: f(x_i, x_j) = exp(x_i . x_j) puts each
    query's weight on its own position."""
    block = NonLocalBlock2d(12, mode="gaussian", sub_sample=False, norm="")
    x = (40.0 * torch.eye(12)).reshape(1, 12, 3, 4)
    assert query_specificity(query_maps(block, x)) == pytest.approx(1.0, abs=1e-6)


def test_maps_of_the_valid_region_only():
    block = NonLocalBlock2d(8, mode="dot_product", norm="")
    x = torch.randn(1, 8, 6, 6)
    maps = query_maps(block, x, valid_size=(4, 2))
    assert maps.shape == (8, 2)  # 4 x 2 queries, 2 x 1 pooled keys
    torch.testing.assert_close(maps, query_maps(block, x[..., :4, :2]))
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(8, dtype=maps.dtype))


def _pairs_layout():
    """Two shapes of 2 queries each (rows 0-1, 2-3) and their lamps on key cells 0 and 1 of 8."""
    lamp = [torch.arange(8) == k for k in range(2)]
    return [(torch.tensor([0, 1]), lamp[0], lamp[1]), (torch.tensor([2, 3]), lamp[1], lamp[0])]


@pytest.mark.parametrize(
    "maps,partner,others,ratio",
    [
        (torch.full((4, 8), 1 / 8), 1 / 8, 1 / 8, 1.0),  # uniform
        (torch.eye(8)[[0, 0, 1, 1]], 1.0, 0.0, math.inf),  # all on the partner
        (torch.eye(8)[[1, 1, 0, 0]], 0.0, 1.0, 0.0),  # all on the other lamp
        (torch.eye(8)[[0, 0, 0, 0]], 0.5, 0.5, 1.0),  # one map for every query: GC's
    ],
    ids=["uniform", "partner", "other lamp", "same for every query"],
)
def test_partner_mass_on_constructed_maps(maps, partner, others, ratio):
    result = pooled([partner_mass(maps.double(), _pairs_layout())])
    assert result["partner"] == pytest.approx(partner) and result["others"] == pytest.approx(others)
    assert result["ratio"] == pytest.approx(ratio)
    assert result["partner_uniform"] == result["others_uniform"] == pytest.approx(1 / 8)
    assert result["queries"] == 4 and result["other_lamps"] == 1


def test_a_context_blocks_partner_mass_is_the_same_for_every_shape():
    """GC pools with one map per image: whichever lamp it weights, shape and partner tie."""
    from nonlocal_det.layers import GlobalContextBlock2d

    block = GlobalContextBlock2d(8, ratio=0.25, init="standard")
    maps = query_maps(block, torch.randn(1, 8, 2, 4))
    pairs = [  # shapes of 1 and 3 queries: the ratio compares each lamp with itself
        (torch.tensor([4]), torch.arange(8) == 0, torch.arange(8) == 3),
        (torch.tensor([5, 6, 7]), torch.arange(8) == 3, torch.arange(8) == 0),
    ]
    assert pooled([partner_mass(maps, pairs)])["ratio"] == pytest.approx(1.0, abs=1e-12)
