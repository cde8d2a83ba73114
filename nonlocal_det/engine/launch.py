"""
Detectron2's ``launch``, with errors that explain themselves reported as one line in every
process: no traceback, in one process or many.
"""

import sys

import torch.multiprocessing as mp
from detectron2.engine import launch

from ..checks import BadDataError, MissingInputError, UnsupportedSetupError

# Errors whose message says what is wrong and how to fix it.
EXPECTED_ERRORS = (BadDataError, MissingInputError, UnsupportedSetupError)
# The exit status of a process stopped by one of them.
EXPECTED_ERROR_EXIT_CODE = 3


def _run_reporting_errors(main_func, *args):
    """``main_func(*args)``; an expected error prints ``error: <message>`` and exits the process."""
    try:
        return main_func(*args)
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(EXPECTED_ERROR_EXIT_CODE)


def launch_reporting_errors(main_func, args) -> None:
    """
    ``main_func(args)`` through Detectron2's ``launch`` with the command-line arguments of
    ``default_argument_parser`` (--num-gpus processes on each of --num-machines machines).

    A process that raises one of ``EXPECTED_ERRORS`` prints its message as one line and exits
    with status ``EXPECTED_ERROR_EXIT_CODE``; in a multi-process run the launching process then
    exits with that status too, without the traceback torch would print for a failed worker.
    Any other error propagates as usual.
    """
    try:
        launch(
            _run_reporting_errors,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(main_func, args),
        )
    except mp.ProcessExitedException as e:
        if e.exit_code != EXPECTED_ERROR_EXIT_CODE:
            raise
        sys.exit(EXPECTED_ERROR_EXIT_CODE)  # the worker has printed its message
