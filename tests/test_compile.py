"""
torch.compile of the blocks: with dynamic shapes (``dynamic=True``) and with the default
recompilation, at two input sizes and on a padded batch with valid sizes, the compiled block
gives the eager block's result. Inductor compiles take tens of seconds: the slow tier.
"""

import pytest
import torch

from nonlocal_det.layers import (
    CGNLBlock2d,
    DisentangledNonLocal2d,
    GlobalContextBlock2d,
    NonLocalBlock2d,
)

pytestmark = pytest.mark.slow

BLOCKS = {
    "NL-embedded_gaussian-GN": lambda: NonLocalBlock2d(16, norm="GN", init="standard"),
    "NL-concatenation-BN": lambda: NonLocalBlock2d(
        16, mode="concatenation", norm="BN", init="standard"
    ),
    "CGNL-dot-GN": lambda: CGNLBlock2d(16, groups=2, norm="GN", init="standard"),
    "DNL-GN": lambda: DisentangledNonLocal2d(16, norm="GN", init="standard"),
    "GC-att-add+mul": lambda: GlobalContextBlock2d(
        16, fusions=("channel_add", "channel_mul"), init="standard"
    ),
}
SIZES = [(2, 16, 12, 14), (3, 16, 9, 21)]


@pytest.mark.parametrize("dynamic", [True, None], ids=["dynamic", "recompile"])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_compiled_block_equals_eager_at_two_sizes(name, dynamic):
    torch.manual_seed(0)
    torch._dynamo.reset()
    block = BLOCKS[name]().eval()
    compiled = torch.compile(block, dynamic=dynamic)
    for shape in SIZES:
        x = torch.randn(*shape)
        torch.testing.assert_close(compiled(x), block(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["NL-embedded_gaussian-GN", "DNL-GN", "GC-att-add+mul"])
def test_compiled_block_computes_valid_regions(name):
    torch.manual_seed(0)
    torch._dynamo.reset()
    block = BLOCKS[name]().eval()
    compiled = torch.compile(block, dynamic=True)
    x = torch.randn(3, 16, 12, 14)
    sizes = [(12, 14), (7, 9), (12, 5)]
    torch.testing.assert_close(compiled(x, sizes), block(x, sizes), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(block(x, sizes), block(x))  # the sizes change the result
