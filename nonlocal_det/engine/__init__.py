"""Training with Detectron2's engine: the YAML trainer, the launcher and the results file train_net.py uses."""

from .defaults import NonLocalDefaultTrainer
from .launch import launch_reporting_errors
from .results import FINAL_METRICS_FILE, write_final_metrics

__all__ = [
    "NonLocalDefaultTrainer",
    "launch_reporting_errors",
    "FINAL_METRICS_FILE",
    "write_final_metrics",
]
