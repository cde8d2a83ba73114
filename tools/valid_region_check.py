#!/usr/bin/env python
"""
Does an image's output depend on its batch-mates? An image alone vs batched with an image of the
other orientation (so both are padded), on NL R50-FPN Mask R-CNN with random weights, the
non-local blocks made non-identity, FrozenBN backbone, in eval mode
(tests/crop_reference.py).

Per row, that module's measures for ``stock`` (Detectron2's R50-FPN Mask R-CNN, no block: the
convolutions' own border effects), ``key off`` (+1 NL block attending over the padded map,
MODEL.NONLOCAL.VALID_REGION False), ``key on`` (the same weights, VALID_REGION True) and ``crop
reference`` (key off, every block run by hand on each image's valid crop: what masking must give).

    python tools/valid_region_check.py   # both size pairs, GN and BN; prints a table
    python tools/valid_region_check.py --pairs 320x480:480x320 --output output/valid_region.md
"""

import argparse
import os
import sys

import torch

from nonlocal_det.errors import exit_on_user_error
from nonlocal_det.harness.cli.args import writable_file
from nonlocal_det.harness.utils.tables import write_text

# The references the tests check against live in tests/.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from crop_reference import measure, table  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _pair(text: str):
    try:
        image, mate = (tuple(int(v) for v in side.split("x")) for side in text.split(":"))
        assert len(image) == len(mate) == 2
    except (ValueError, AssertionError):
        message = f"{text!r}: expected HxW:HxW, e.g. 512x768:768x512"
        raise argparse.ArgumentTypeError(message) from None
    return image, mate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pairs = [_pair("512x768:768x512"), _pair("320x480:480x320")]
    parser.add_argument("--pairs", nargs="+", type=_pair, default=pairs)
    parser.add_argument("--norms", nargs="+", default=["GN", "BN"], choices=["GN", "BN"])
    parser.add_argument(
        "--backbone-stats",
        choices=["calibrated", "identity"],
        default="calibrated",
        help="the FrozenBN backbone's statistics: taken on the two images (non-zero shifts, as a "
        "trained backbone has) or Detectron2's initial identity (padded zeros stay zero)",
    )
    parser.add_argument(
        "--output", type=writable_file, help="also write the table to this markdown file"
    )
    args = parser.parse_args(argv)
    import nonlocal_det  # noqa: F401  (registers the meta-architectures and the backbone)

    rows = measure(args.pairs, args.norms, CONFIG_DIR, args.backbone_stats == "calibrated")
    stats = f"Backbone statistics: {args.backbone_stats}. CPU, torch {torch.__version__}."
    text = f"{table(rows)}\n\n{stats}\n"
    print(text)
    if args.output:
        write_text(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
