"""OUTPUT_DIR/final_metrics.json: the results of a run's latest evaluation, as strict JSON."""

import json
import logging
import math
import os
from typing import Dict, Sequence

import detectron2.utils.comm as comm
from detectron2.utils.file_io import PathManager

FINAL_METRICS_FILE = "final_metrics.json"

logger = logging.getLogger(__name__)


def write_final_metrics(output_dir: str, dataset_names: Sequence[str], results: Dict) -> None:
    """Save results as output_dir/final_metrics.json ({dataset: {task: {metric: value}}}; Detectron2
    gives one dataset's unwrapped); NaN metrics (e.g. APl with no large objects) become null."""
    if not results or not comm.is_main_process():
        return
    if len(dataset_names) == 1:
        results = {dataset_names[0]: results}
    results = {
        dataset: {
            task: {k: (None if math.isnan(v) else v) for k, v in metrics.items()}
            for task, metrics in tasks.items()
        }
        for dataset, tasks in results.items()
    }
    path = os.path.join(output_dir, FINAL_METRICS_FILE)
    with PathManager.open(path, "w") as f:
        json.dump(results, f, indent=2, allow_nan=False)
    logger.info(f"Final metrics written to {path}")
