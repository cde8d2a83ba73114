"""
Detectron2's ``launch``, with errors that explain themselves reported as one line in every
process: no traceback, in one process or many.
"""

import os
import socket
import sys
import time
from urllib.parse import urlparse

import torch.multiprocessing as mp
from detectron2.engine import launch

from nonlocal_det.errors import (
    USER_ERROR_EXIT_CODE,
    ConfigError,
    UnsupportedSetupError,
    exit_on_user_error,
)


def launch_reporting_errors(main_func, args) -> None:
    """
    ``main_func(args)`` through Detectron2's ``launch`` with the command-line arguments of
    ``default_argument_parser`` (--num-gpus processes on each of --num-machines machines).

    A process that raises one of ``USER_ERRORS`` prints its message as one line and exits
    with status ``USER_ERROR_EXIT_CODE``; in a multi-process run the launching process then
    exits with that status too, without the traceback torch would print for a failed worker.
    Any other error propagates as usual.
    """
    exit_on_user_error(check_machines, args)
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
    except mp.ProcessRaisedException as e:
        if "DistStoreError" not in str(e) and "timed out" not in str(e).lower():
            raise
        print(
            f"error: --dist-url {args.dist_url}: the {args.num_machines * args.num_gpus} "
            "processes did not all join within Detectron2's launch timeout (30 minutes); start "
            "every machine with the same --dist-url and --num-machines, each with its own "
            "--machine-rank",
            file=sys.stderr,
        )
        sys.exit(USER_ERROR_EXIT_CODE)


def _wait_seconds() -> float:
    return float(os.environ.get("NONLOCAL_DET_DIST_WAIT", "300"))


def check_machines(args) -> None:
    """
    Before launching: the process counts and the machine rank fit, a run over several machines
    names an address the others can reach, and a machine other than machine 0 reaches it within
    NONLOCAL_DET_DIST_WAIT seconds (default 300), or stops saying so.
    """
    if args.num_gpus < 1 or args.num_machines < 1:
        raise ConfigError("--num-gpus and --num-machines must be at least 1")
    if not 0 <= args.machine_rank < args.num_machines:
        raise ConfigError(
            f"--machine-rank {args.machine_rank} of --num-machines {args.num_machines}: ranks "
            f"run from 0 to {args.num_machines - 1}"
        )
    if args.num_machines == 1:
        return
    url = urlparse(args.dist_url)
    if (
        args.dist_url == "auto"
        or url.hostname in (None, "localhost", "::1")
        or (url.hostname.startswith("127."))
    ):
        raise ConfigError(
            f"--num-machines {args.num_machines} with --dist-url {args.dist_url}: that address "
            "is this machine's own; give machine 0's address every machine can reach, e.g. "
            "--dist-url tcp://10.0.0.1:29500"
        )
    if args.machine_rank == 0:
        return
    deadline = time.monotonic() + _wait_seconds()
    while True:
        try:
            socket.create_connection((url.hostname, url.port), timeout=5).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise UnsupportedSetupError(
                    f"--dist-url {args.dist_url}: machine 0 could not be reached for "
                    f"{_wait_seconds():.0f} s ({e.strerror or e}); start machine 0 first, check "
                    "the address and firewall (NONLOCAL_DET_DIST_WAIT sets the wait)"
                ) from None
            time.sleep(2)
