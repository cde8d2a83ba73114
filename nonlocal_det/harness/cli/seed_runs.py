"""
The runs of a seed sweep (tools/run_seeds.py): each (config, seed) is a train_net.py output folder
with ``run.json`` (the run record) and ``final_metrics.json``; a finished run is also kept as one
small summary file (run record, final metrics, training-loss points; no checkpoint), from which the
report is rebuilt without retraining (``seed_report``).
"""

import json
import os
from typing import Optional

from nonlocal_det.errors import BadDataError

from ..engine.results import FINAL_METRICS_FILE
from ..io import write_json

__all__ = [
    "RUN_FILE",
    "TASKS",
    "config_name",
    "run_dir",
    "load_run",
    "summary_path",
    "write_summary",
    "load_summary",
    "training_losses",
    "run_losses",
]

RUN_FILE = "run.json"
TASKS = (("bbox", "box AP"), ("segm", "mask AP"), ("keypoints", "keypoint AP"))


def config_name(config_file: str) -> str:
    return os.path.splitext(os.path.basename(config_file))[0]


def run_dir(output_dir: str, config_file: str, seed: int) -> str:
    return os.path.join(output_dir, config_name(config_file), f"seed{seed}")


def load_run(directory: str) -> Optional[dict]:
    """
    The finished run in ``directory``: run.json's fields plus "metrics" {task: AP} and
    "all_metrics" {task: {metric: value}} of the first test set. None if not finished.
    """
    paths = [os.path.join(directory, name) for name in (RUN_FILE, FINAL_METRICS_FILE)]
    if not all(os.path.isfile(p) for p in paths):
        return None
    with open(paths[0]) as f:
        run = json.load(f)
    with open(paths[1]) as f:
        per_dataset = json.load(f)
    tasks = next(iter(per_dataset.values()))
    run["all_metrics"] = tasks
    run["metrics"] = {task: tasks[task]["AP"] for task, _ in TASKS if task in tasks}
    run["directory"] = directory
    return run


def summary_path(summary_dir: str, config_file: str, seed: int) -> str:
    return os.path.join(summary_dir, config_name(config_file), f"seed{seed}.json")


def write_summary(run: dict, path: str) -> None:
    """
    A finished run as one small JSON file (no checkpoint): its run record, final metrics and the
    training-loss points. ``load_summary`` reads it back as the run it came from.
    """
    its, losses = training_losses(run["directory"])
    with open(os.path.join(run["directory"], FINAL_METRICS_FILE)) as f:
        final_metrics = json.load(f)
    record = {k: v for k, v in run.items() if k not in ("metrics", "all_metrics", "directory")}
    summary = {
        "run": record,
        "final_metrics": final_metrics,
        "loss": {"iteration": its, "total_loss": losses},
    }
    write_json(path, summary, indent=1)


def load_summary(path: str) -> dict:
    """
    The run a ``write_summary`` file records, in ``load_run``'s shape plus "loss"; BadDataError
    naming the file when it is not one (damaged, or of another shape).
    """
    try:
        with open(path) as f:
            summary = json.load(f)
        run = dict(summary["run"])
        tasks = next(iter(summary["final_metrics"].values()))
        run["all_metrics"] = tasks
        run["metrics"] = {task: tasks[task]["AP"] for task, _ in TASKS if task in tasks}
        run["directory"] = None
        run["loss"] = {
            "iteration": summary["loss"]["iteration"],
            "total_loss": summary["loss"]["total_loss"],
        }
        _ = run["seed"], run["wall_s"]  # the fields every report reads
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration) as e:
        raise BadDataError(
            f"{path} is not a run summary of tools/run_seeds.py ({type(e).__name__}: {e}); "
            "restore it from git, or rerun that run with --summary-dir"
        ) from None
    return run


def run_losses(run: dict):
    """(iterations, total_loss) of a run: from its summary, or from its directory's metrics.json."""
    if run.get("loss"):
        return run["loss"]["iteration"], run["loss"]["total_loss"]
    return training_losses(run["directory"])


def training_losses(directory: str):
    """(iterations, total_loss) from a run's metrics.json."""
    its, losses = [], []
    path = os.path.join(directory, "metrics.json")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line) if line.strip() else {}
                if "total_loss" in record:
                    its.append(record["iteration"])
                    losses.append(record["total_loss"])
    return its, losses
