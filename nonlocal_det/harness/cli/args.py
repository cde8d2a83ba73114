"""
What the tools' command lines share: Detectron2's ``default_argument_parser`` for model tools, and
argument types that check their domain at parse time (argparse's usage error, exit status 2).
"""

import argparse
import math
import os

from detectron2.engine import default_argument_parser

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 3, "configs")


def ranged(convert, ok, words: str):
    """argparse type: ``convert(text)``, refused unless ``ok(value)``; ``words``: the domain."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {words}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} is not {words}")
        return value

    return parse


positive_int = ranged(int, lambda v: v >= 1, "an int >= 1")
non_negative_int = ranged(int, lambda v: v >= 0, "an int >= 0")
positive_float = ranged(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
probability = ranged(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
image_side = ranged(int, lambda v: 32 <= v <= 10000, "a side of 32 to 10000 pixels")


def config_pair(text: str):
    """'baseline.yaml:other.yaml': two files of the repository's configs/ folder."""
    names = text.split(":")
    if len(names) != 2 or not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} is not baseline.yaml:other.yaml")
    for name in names:
        if not os.path.isfile(os.path.join(CONFIGS, name)):
            raise argparse.ArgumentTypeError(f"{name} is not a file of configs/")
    return tuple(names)


def writable_file(text: str) -> str:
    """A file the tool writes: not a folder, in a folder that is not a file."""
    folder = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text) or (os.path.exists(folder) and not os.path.isdir(folder)):
        raise argparse.ArgumentTypeError(f"{text} is a folder, or in a file; name a file to write")
    return text


def writable_folder(text: str) -> str:
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file; name a folder for the outputs")
    return text


def model_argument_parser(doc: str) -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` (--config-file, overrides after the options)
    with ``doc`` and ``--random-weights``; the launch options are unused by the tools."""
    parser = default_argument_parser(epilog=doc)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="accept a model without (or with mismatched) trained weights, e.g. to try the tool",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser


def tool_config(parser: argparse.ArgumentParser, args, frozen: bool = True):
    """The YAML config of a model tool's ``args``, its weights checked; --config-file required."""
    from ..config import get_nonlocal_cfg
    from ..preflight import check_weights

    if not args.config_file:
        parser.error("the following arguments are required: --config-file")
    if args.debug:
        os.environ["NONLOCAL_DET_DEBUG"] = "1"
    cfg = get_nonlocal_cfg(args.config_file, args.opts)
    check_weights(cfg, resume=False)
    if frozen:
        cfg.freeze()
    return cfg
