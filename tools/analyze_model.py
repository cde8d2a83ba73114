#!/usr/bin/env python
"""
Parameters and FLOPs (fvcore, through Detectron2's FlopCountAnalysis) of a config at a given
input size, and the non-local vs baseline overhead table of the shipped configs.

How the model is run and counted: ``nonlocal_det.harness.analysis.model_costs``.

    python tools/analyze_model.py --config-file configs/mask_rcnn_R101_NL.yaml --size 800 1333
    python tools/analyze_model.py --overhead-table --size 64 96   # the table of docs/overhead.md
"""

import argparse

from nonlocal_det.errors import exit_on_user_error
from nonlocal_det.harness.analysis.model_costs import OVERHEAD_PAIRS, analyze, overhead_table
from nonlocal_det.harness.cli.args import config_pair, image_side, writable_file
from nonlocal_det.harness.utils.tables import write_text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", help="a YAML config")
    parser.add_argument("--size", nargs=2, type=image_side, default=(800, 1333), metavar=("H", "W"))
    table_help = "NL vs baseline for the shipped configs"
    parser.add_argument("--overhead-table", action="store_true", help=table_help)
    parser.add_argument("--output", type=writable_file, help="write the overhead table here")
    pairs_help = (
        "baseline.yaml:nonlocal.yaml from configs/ for the table (default: the shipped ones)"
    )
    parser.add_argument("--pairs", nargs="+", type=config_pair, help=pairs_help)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args(argv)
    if not args.overhead_table and not args.config_file:
        parser.error("--config-file is required unless --overhead-table is given")
    return args


def main(argv=None):
    args = parse_args(argv)
    height, width = args.size
    if args.overhead_table:
        text = overhead_table(args.pairs or OVERHEAD_PAIRS, height, width, progress=print)
        print(text)
        if args.output:
            write_text(args.output, text)
        return
    r = analyze(args.config_file, height, width, args.opts)
    print(f"config: {args.config_file}, input {height}x{width}")
    print(f"parameters: {r['params'] / 1e6:.2f} M")
    print(
        f"GFLOPs (fvcore, multiply-adds): total {r['flops'] / 1e9:.2f}, backbone "
        f"{r['backbone_flops'] / 1e9:.2f}, roi_heads {r['roi_heads_flops'] / 1e9:.2f}"
    )
    if r["unsupported"]:
        print("not counted:", ", ".join(f"{k} x{v}" for k, v in sorted(r["unsupported"].items())))


if __name__ == "__main__":
    exit_on_user_error(main)
