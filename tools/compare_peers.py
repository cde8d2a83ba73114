#!/usr/bin/env python
"""
Our GC and DNL blocks against their peers, with the same weights copied in, in float64: mmcv's
``ContextBlock`` for every pooling x fusion, mmsegmentation's ``DisentangledNonLocal2d`` with and
without a norm after W_z and with and without sub-sampling. Prints the largest absolute
difference of the outputs and of the gradients (input and every parameter) and exits 1 if one
is above 1e-9. The tests check the same blocks against the formulas written out in
``tests/reference.py``; this is the check against the peers' own code.

    pip install --no-deps mmcv-lite mmengine mmsegmentation addict yapf rich markdown-it-py mdurl
    python tools/compare_peers.py
"""

import argparse
import itertools
import os
import sys

import torch

from nonlocal_det.errors import MissingInputError, exit_on_user_error
from nonlocal_det.layers import GC_POOLINGS, DisentangledNonLocal2d, GlobalContextBlock2d

# The references the tests check against live in tests/.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from peers import available, mmcv_context_block, mmseg_dnl, parameter_pairs  # noqa: E402

BAR = 1e-9
FUSION_SETS = [("channel_add",), ("channel_mul",), ("channel_add", "channel_mul")]


def _randomized(block):
    """float64, every parameter random (also those that start at zero)."""
    gen = torch.Generator().manual_seed(0)
    block = block.double()
    with torch.no_grad():
        for p in block.parameters():
            fan_in = max(p[0].numel(), 1)
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / fan_in**0.5)
    return block


def differences(ours, theirs, shape):
    """(max |forward difference|, max |gradient difference|) on a random input of ``shape``."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outputs, grads = [], []
    for block, params in zip((ours, theirs), zip(*parameter_pairs(ours, theirs))):
        xi = x.clone().requires_grad_()
        outputs.append(block(xi))
        grads.append(torch.autograd.grad(outputs[-1].sin().sum(), [xi, *params]))
    forward = (outputs[0] - outputs[1]).abs().max().item()
    backward = max((a - b).abs().max().item() for a, b in zip(*grads))
    return forward, backward


def rows():
    """(block, settings, forward difference, gradient difference or the peer's error)."""
    for pooling, fusions in itertools.product(GC_POOLINGS, FUSION_SETS):
        ours = _randomized(GlobalContextBlock2d(32, ratio=0.25, pooling=pooling, fusions=fusions))
        diffs = differences(ours, mmcv_context_block(ours), (2, 32, 7, 9))
        yield ("GC vs mmcv ContextBlock", f"{pooling}, {'+'.join(fusions)}", *diffs)
    # temperature 0.125 and 16 inner channels: mmsegmentation divides by float32 tensors of
    # them, exact only for such values
    for norm, sub_sample in itertools.product(["", "GN", "BN"], [False, True]):
        ours = _randomized(
            DisentangledNonLocal2d(32, temperature=0.125, norm=norm, sub_sample=sub_sample)
        ).train()
        try:
            diffs = differences(ours, mmseg_dnl(ours), (2, 32, 6, 8))
        except RuntimeError as e:
            diffs = (None, f"mmseg fails: {str(e).splitlines()[0]}")
        settings = f"norm {norm or 'none'}, sub_sample {sub_sample}"
        yield ("DNL vs mmseg DisentangledNonLocal2d", settings, *diffs)


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    for peer in ("mmcv", "mmseg"):
        if not available(peer):
            message = f"{peer} is not importable: install it as this tool's --help says"
            raise MissingInputError(message)
    failed = False
    print("| block | settings | max abs forward difference | max abs gradient difference |")
    print("|---|---|---|---|")
    for block, settings, forward, backward in rows():
        if forward is None:
            print(f"| {block} | {settings} | — | {backward} |")
            continue
        failed |= forward > BAR or backward > BAR
        print(f"| {block} | {settings} | {forward:.1e} | {backward:.1e} |")
    return int(failed)


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
