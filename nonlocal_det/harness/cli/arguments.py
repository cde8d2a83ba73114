"""
Command-line arguments of the tools, checked against their domains while they are parsed, and
refused through the one error path (``nonlocal_det.errors``): ``error: <message>``, exit status
``USER_ERROR_EXIT_CODE``, no traceback.
"""

import argparse
import math
import os

from nonlocal_det.errors import ConfigError

__all__ = [
    "ArgumentParser",
    "positive_int",
    "non_negative_int",
    "positive_float",
    "probability",
    "config_pair",
    "image_size",
    "new_file",
    "existing_file",
    "output_folder",
]


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are ConfigErrors naming the tool and argument."""

    def error(self, message):
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def _int(text: str, low: int, words: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is not {words}")
    return value


def positive_int(text: str) -> int:
    return _int(text, 1, "an int >= 1")


def non_negative_int(text: str) -> int:
    return _int(text, 0, "an int >= 0")


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not > 0")
    return value


def probability(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return value


def config_pair(text: str):
    """'baseline.yaml:other.yaml': two files of the repository's configs/ folder."""
    configs = os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 3, "configs")
    names = text.split(":")
    if len(names) != 2 or not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} is not baseline.yaml:other.yaml")
    for name in names:
        if not os.path.isfile(os.path.join(configs, name)):
            raise argparse.ArgumentTypeError(f"{name} is not a file of {configs}")
    return tuple(names)


def image_size(text: str) -> int:
    """One side of an image, in pixels: an int from 32 to 10000."""
    value = _int(text, 32, "a side of at least 32 pixels")
    if value > 10000:
        raise argparse.ArgumentTypeError(f"{value} is not a side of at most 10000 pixels")
    return value


def new_file(text: str) -> str:
    """A file the tool writes: not a folder, in a folder that exists or can be created."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file to write")
    folder = os.path.dirname(os.path.abspath(text))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{folder} is a file, not a folder")
    return text


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return text


def output_folder(text: str) -> str:
    """A folder the tool writes into: not an existing file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file; name a folder for the outputs")
    return text
