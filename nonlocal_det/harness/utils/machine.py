"""The machine and code a measurement ran on, as the tables and run records state it."""

import os
import platform
import subprocess
from typing import Optional


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str = "cpu") -> str:
    """ "AMD EPYC, 2 cores, torch 2.14.1 (2 threads)", plus the GPU's name on CUDA."""
    import torch

    desc = (
        f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    if device == "cuda":
        desc += f", GPU {torch.cuda.get_device_name()}"
    return desc


def git_commit(repo: str) -> Optional[str]:
    """The commit checked out in ``repo``, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None
