"""
The runs of a seed sweep (tools/run_seeds.py): each (config, seed) a train_net.py output folder
with ``run.json`` and ``final_metrics.json``, kept as a small summary file once finished.
"""

import json
import os
from typing import Optional

from nonlocal_det.errors import BadDataError

from ..engine.results import FINAL_METRICS_FILE
from ..io import write_json

RUN_FILE = "run.json"
TASKS = (("bbox", "box AP"), ("segm", "mask AP"), ("keypoints", "keypoint AP"))


def config_name(config_file: str) -> str:
    return os.path.splitext(os.path.basename(config_file))[0]


def run_dir(output_dir: str, config_file: str, seed: int) -> str:
    return os.path.join(output_dir, config_name(config_file), f"seed{seed}")


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _with_metrics(run: dict, final_metrics: dict, directory: Optional[str]) -> dict:
    """``run`` plus "directory", "all_metrics" and "metrics" {task: AP} of its first test set."""
    tasks = next(iter(final_metrics.values()))
    run["all_metrics"] = tasks
    run["metrics"] = {task: tasks[task]["AP"] for task, _ in TASKS if task in tasks}
    run["directory"] = directory
    return run


def load_run(directory: str) -> Optional[dict]:
    """The finished run in ``directory``: run.json plus its metrics; None if not finished."""
    paths = [os.path.join(directory, name) for name in (RUN_FILE, FINAL_METRICS_FILE)]
    if not all(os.path.isfile(p) for p in paths):
        return None
    return _with_metrics(_read_json(paths[0]), _read_json(paths[1]), directory)


def summary_path(summary_dir: str, config_file: str, seed: int) -> str:
    return os.path.join(summary_dir, config_name(config_file), f"seed{seed}.json")


def write_summary(run: dict, path: str) -> None:
    """A finished run as one small JSON file: run record, final metrics, training-loss points."""
    its, losses = training_losses(run["directory"])
    final_metrics = _read_json(os.path.join(run["directory"], FINAL_METRICS_FILE))
    record = {k: v for k, v in run.items() if k not in ("metrics", "all_metrics", "directory")}
    loss = {"iteration": its, "total_loss": losses}
    write_json(path, {"run": record, "final_metrics": final_metrics, "loss": loss}, indent=1)


def load_summary(path: str) -> dict:
    """The run a ``write_summary`` file records, as ``load_run`` gives it plus "loss"; BadDataError
    naming the file when it is not one (damaged, or of another shape)."""
    try:
        summary = _read_json(path)
        run = _with_metrics(dict(summary["run"]), summary["final_metrics"], None)
        run["loss"] = {key: summary["loss"][key] for key in ("iteration", "total_loss")}
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
    path = os.path.join(directory, "metrics.json")
    if not os.path.isfile(path):
        return [], []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    records = [r for r in records if "total_loss" in r]
    return [r["iteration"] for r in records], [r["total_loss"] for r in records]
