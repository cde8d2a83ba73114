"""harness.analysis.attention: query specificity and cue mass on maps and tiny blocks."""

import math

import pytest
import torch

from nonlocal_det.harness.analysis.attention import cue_mass, query_maps, query_specificity
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
