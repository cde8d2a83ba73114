"""
Detectron2's ``launch``, with errors that explain themselves reported as one line in every
process: no traceback, in one process or many.
"""

import sys

import torch.multiprocessing as mp
from detectron2.engine import launch

from nonlocal_det.errors import USER_ERROR_EXIT_CODE, exit_on_user_error


def launch_reporting_errors(main_func, args) -> None:
    """
    ``main_func(args)`` through Detectron2's ``launch`` with the command-line arguments of
    ``default_argument_parser`` (--num-gpus processes on each of --num-machines machines).

    A process that raises one of ``USER_ERRORS`` prints its message as one line and exits
    with status ``USER_ERROR_EXIT_CODE``; in a multi-process run the launching process then
    exits with that status too, without the traceback torch would print for a failed worker.
    Any other error propagates as usual.
    """
    try:
        launch(
            exit_on_user_error,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(main_func, args),
        )
    except mp.ProcessExitedException as e:
        if e.exit_code != USER_ERROR_EXIT_CODE:
            raise
        sys.exit(USER_ERROR_EXIT_CODE)  # the worker has printed its message
