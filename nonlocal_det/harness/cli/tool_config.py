"""
Config for the tools that look at a trained model (demo, attention pictures and measures): one
argument set, one loading path, the errors of ``nonlocal_det.errors``; the model itself comes from
``nonlocal_det.harness.checkpoint.build_trained_model``.
"""

import argparse
import os

__all__ = ["add_model_arguments", "apply_debug", "load_config"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--config-file, --random-weights, --debug, and config overrides after the options."""
    parser.add_argument("--config-file", required=True)
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="accept a model without (or with mismatched) trained weights, e.g. to try the tool",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks of errors (NONLOCAL_DET_DEBUG=1)"
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides KEY VALUE ..., after every option (e.g. MODEL.WEIGHTS path)",
    )


def apply_debug(args) -> None:
    if getattr(args, "debug", False):
        os.environ["NONLOCAL_DET_DEBUG"] = "1"


def load_config(args, frozen: bool = True):
    """The YAML config of ``args`` (ConfigError for bad files, keys, values), weights checked."""
    from nonlocal_det.harness.config import get_nonlocal_cfg

    from ..preflight import check_weights

    cfg = get_nonlocal_cfg(args.config_file, args.opts)
    if cfg.MODEL.WEIGHTS:
        check_weights(cfg, resume=False)
    if frozen:
        cfg.freeze()
    return cfg
