"""
The errors a user can fix. Each message names what is wrong (the file, record, key or value) and
the fix; ``train_net.py`` and the tools print it as ``error: <message>`` and exit, with no
traceback (``NONLOCAL_DET_DEBUG=1`` or ``--debug`` shows it). Any other exception is a bug and
propagates as usual.
"""

import os
import sys

__all__ = [
    "BadDataError",
    "ConfigError",
    "MissingInputError",
    "UnsupportedSetupError",
    "USER_ERRORS",
    "USER_ERROR_EXIT_CODE",
    "debugging",
    "exit_on_user_error",
]


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
