"""
The errors a user can fix. Each message names what is wrong (the file, record, key or value) and
the fix; ``train_net.py`` and the tools print it as ``error: <message>`` and exit, with no
traceback (``NONLOCAL_DET_DEBUG=1`` or ``--debug`` shows it). Any other exception is a bug and
propagates as usual.
"""

import importlib
import os
import sys


class MissingInputError(RuntimeError):
    """A weight file or dataset that cannot be found, downloaded or read."""


class BadDataError(RuntimeError):
    """A dataset whose files or annotations cannot be used as they are."""


class UnsupportedSetupError(RuntimeError):
    """A config this machine cannot run as asked."""


class ConfigError(ValueError):
    """A config file, key or value the user can fix."""


USER_ERRORS = (BadDataError, ConfigError, MissingInputError, UnsupportedSetupError)
# The exit status of a process stopped by one of them.
USER_ERROR_EXIT_CODE = 3


def debugging() -> bool:
    """Whether tracebacks of user errors are wanted: NONLOCAL_DET_DEBUG=1 (``--debug`` sets it)."""
    return os.environ.get("NONLOCAL_DET_DEBUG", "") not in ("", "0")


def exit_on_user_error(func, *args, **kwargs):
    """``func(*args, **kwargs)``; a user error prints ``error: <message>`` and exits the process."""
    try:
        return func(*args, **kwargs)
    except USER_ERRORS as e:
        if debugging():
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT_CODE)


DETECTRON2_INSTALL_URL = "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"


def detectron2_available() -> bool:
    try:
        importlib.import_module("detectron2")
    except ImportError:
        return False
    return True


def require_detectron2(what: str):
    """``detectron2``, or an ImportError saying that ``what`` needs it and how to install it."""
    try:
        return importlib.import_module("detectron2")
    except ImportError as e:
        raise ImportError(
            f"{what} needs Detectron2, which is not installed in this Python "
            f"({e}). Detectron2 is not on PyPI: install it from its official instructions, "
            f"{DETECTRON2_INSTALL_URL} (e.g. build it from a clone with "
            "`python -m pip install --no-build-isolation -e detectron2`). "
            "nonlocal_det.layers works without it."
        ) from e
