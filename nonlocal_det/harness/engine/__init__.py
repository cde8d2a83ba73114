"""train_net.py's engine: the YAML trainer, the LazyConfig loop, the launcher, the results file."""

from .defaults import NonLocalDefaultTrainer, setup_nonlocal_logger
from .launch import launch_reporting_errors
from .lazy import run_lazy_config
from .results import FINAL_METRICS_FILE, write_final_metrics

__all__ = [
    "NonLocalDefaultTrainer",
    "setup_nonlocal_logger",
    "run_lazy_config",
    "launch_reporting_errors",
    "FINAL_METRICS_FILE",
    "write_final_metrics",
]
