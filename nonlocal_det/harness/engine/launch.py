"""Detectron2's ``launch``, with user errors as one line, no traceback, in every process."""

import os
import socket
import sys
import time
from urllib.parse import urlparse

import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser, launch

from nonlocal_det.errors import (
    USER_ERROR_EXIT_CODE,
    ConfigError,
    UnsupportedSetupError,
    exit_on_user_error,
)


def launch_reporting_errors(main_func, args) -> None:
    """
    ``main_func(args)`` through Detectron2's ``launch``. A process that raises one of USER_ERRORS
    prints it as one line and exits with USER_ERROR_EXIT_CODE; so does the launching process of a
    multi-process run, without torch's traceback of a failed worker. Other errors propagate.
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


def check_machines(args) -> None:
    """Before launching: counts and rank fit, a run over machines names an address the others can
    reach, and machines but 0 reach it within NONLOCAL_DET_DIST_WAIT seconds (default 300)."""
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
    # The parser's default (a loopback port) is never what a run over machines means; a
    # loopback address given on purpose runs the "machines" as processes of this host.
    if args.dist_url in ("auto", default_argument_parser().get_default("dist_url")):
        raise ConfigError(
            f"--num-machines {args.num_machines} with --dist-url {args.dist_url}: that address "
            "is this machine's own; give machine 0's address every machine can reach, e.g. "
            "--dist-url tcp://10.0.0.1:29500"
        )
    if args.machine_rank == 0:
        return
    wait = float(os.environ.get("NONLOCAL_DET_DIST_WAIT", "300"))
    deadline = time.monotonic() + wait
    while True:
        try:
            socket.create_connection((url.hostname, url.port), timeout=5).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise UnsupportedSetupError(
                    f"--dist-url {args.dist_url}: machine 0 could not be reached for "
                    f"{wait:.0f} s ({e.strerror or e}); start machine 0 first, check "
                    "the address and firewall (NONLOCAL_DET_DIST_WAIT sets the wait)"
                ) from None
            time.sleep(2)
