"""train_net.py end to end on the generated dataset: train, checkpoint, resume, --eval-only."""

import json
import os
import re

import pytest

from helpers import TINY, generate_synthetic_under, last_iteration, run_train_net

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return generate_synthetic_under(tmp_path_factory.mktemp("run"), train=8, val=3)


def test_train_resume_and_eval_only(small_dataset):
    out = small_dataset / "out"
    rc, log = run_train_net(small_dataset, *TINY, "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", str(out))
    assert rc == 0, log[-3000:]
    assert (out / "model_final.pth").exists() and (out / "last_checkpoint").exists()
    assert last_iteration(out) == 3
    assert "Evaluation results for bbox" in log

    rc, log = run_train_net(
        small_dataset, "--resume", *TINY, "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", str(out)
    )
    assert rc == 0, log[-3000:]
    assert "Loading from " in log and "model_final.pth" in log
    assert "Starting training from iteration 4" in log
    assert last_iteration(out) == 5

    rc, log = run_train_net(
        small_dataset,
        "--eval-only",
        *TINY,
        "MODEL.WEIGHTS",
        str(out / "model_final.pth"),
        "OUTPUT_DIR",
        str(out / "eval"),
    )
    assert rc == 0, log[-3000:]
    for task in ("bbox", "segm", "keypoints"):
        assert f"Evaluation results for {task}" in log, task
        assert f"copypaste: Task: {task}" in log, task
    assert re.search(r"\|\s+AP\s+\|\s+AP50\s+\|\s+AP75\s+\|", log)


def test_no_arguments_runs_the_quickstart(small_dataset):
    """
    `python train_net.py` = configs/quickstart.yaml; here shortened to 5 iterations on the small
    dataset.
    """
    out = small_dataset / "quickstart"
    rc, log = run_train_net(
        small_dataset,
        "SOLVER.MAX_ITER",
        "5",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
        "OUTPUT_DIR",
        str(out),
        config=None,
    )
    assert rc == 0, log[-3000:]
    assert "No --config-file given: running the quickstart" in log
    assert re.search(r"eta: \d+:\d\d:\d\d\s+iter: 4\s", log), "no progress line with an ETA"
    assert any(name.startswith("events.out.tfevents.") for name in os.listdir(out)), (
        "no TensorBoard events"
    )
    with open(out / "final_metrics.json") as f:
        metrics = json.load(f, parse_constant=lambda c: pytest.fail(f"{c} in final_metrics.json"))
    for task in ("bbox", "segm", "keypoints"):
        assert "AP" in metrics["nonlocal_synthetic_val"][task], task
    with open(out / "config.yaml") as f:
        assert "KRCNNConvDeconvUpsampleNLHead" in f.read()


def test_missing_weights_say_what_to_do(small_dataset):
    opts = list(TINY)
    opts[opts.index("MODEL.WEIGHTS") + 1] = (
        "detectron2://ImageNetPretrained/MSRA/R-50-does-not-exist.pkl"
    )
    rc, log = run_train_net(
        small_dataset, *opts, "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(small_dataset / "w")
    )
    assert rc != 0
    assert (
        "MODEL.WEIGHTS='detectron2://ImageNetPretrained/MSRA/R-50-does-not-exist.pkl' could not be "
        "found or downloaded" in log
    )
    assert "Traceback" not in log


def test_missing_dataset_says_what_to_do(tmp_path):
    rc, log = run_train_net(
        tmp_path, "--eval-only", "MODEL.WEIGHTS", "", "DATASETS.TEST", "('coco_2017_val',)"
    )
    assert rc != 0
    assert (
        "Dataset 'coco_2017_val'" in log
        and "DETECTRON2_DATASETS" in log
        and "datasets/README.md" in log
    )
    assert "Traceback" not in log


def test_amp_on_cpu_says_what_to_do(small_dataset):
    rc, log = run_train_net(
        small_dataset,
        *TINY,
        "SOLVER.AMP.ENABLED",
        "True",
        "MODEL.DEVICE",
        "cpu",
        "SOLVER.MAX_ITER",
        "1",
        "OUTPUT_DIR",
        str(small_dataset / "amp"),
    )
    assert rc != 0
    assert (
        "SOLVER.AMP.ENABLED=True needs a CUDA device" in log and "SOLVER.AMP.ENABLED False" in log
    )
    assert "Traceback" not in log
