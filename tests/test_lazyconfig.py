"""
LazyConfig: mask_rcnn_R101_NL.py builds the same model as mask_rcnn_R101_NL.yaml, and
train_net.py trains, resumes and evaluates a LazyConfig as it does a YAML config.
"""

import json
import os

import pytest

from helpers import (
    CONFIG_DIR,
    HAS_DETECTRON2,
    TEST_CONFIG_DIR,
    generate_synthetic_under,
    last_iteration,
    load_cfg,
    run_train_net,
)

pytestmark = pytest.mark.detectron2

if HAS_DETECTRON2:
    from detectron2.config import LazyConfig, instantiate
    from detectron2.modeling import build_model

TINY_LAZY = os.path.join(TEST_CONFIG_DIR, "tiny_mask_rcnn_nl.py")


def test_lazy_config_matches_yaml():
    lazy = LazyConfig.load(os.path.join(CONFIG_DIR, "mask_rcnn_R101_NL.py"))
    lazy_model = instantiate(lazy.model)
    yaml_model = build_model(load_cfg("mask_rcnn_R101_NL.yaml"))
    lazy_state, yaml_state = lazy_model.state_dict(), yaml_model.state_dict()
    assert {k: tuple(v.shape) for k, v in lazy_state.items()} == {
        k: tuple(v.shape) for k, v in yaml_state.items()
    }
    a = lazy_model.backbone.bottom_up.res4[21].nonlocal_block
    b = yaml_model.backbone.bottom_up.res4[21].nonlocal_block
    assert a.extra_repr() == b.extra_repr() and type(a.norm) is type(b.norm)
    module_types = [
        [type(m) for m in model.backbone.bottom_up.modules()] for model in (lazy_model, yaml_model)
    ]
    assert module_types[0] == module_types[1]  # the non-local block classes included
    # frozen as the YAML model is: res2 and the stem (FREEZE_AT 2), not the non-local block
    for model in (lazy_model, yaml_model):
        resnet = model.backbone.bottom_up
        assert not any(p.requires_grad for p in resnet.res2.parameters())
        assert all(p.requires_grad for p in resnet.res4[21].parameters())
    assert lazy.train.init_checkpoint == "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
    assert lazy.train.max_iter == 270000


@pytest.fixture(scope="module")
def lazy_run_dir(tmp_path_factory):
    return generate_synthetic_under(tmp_path_factory.mktemp("lazy"), train=6, val=2)


@pytest.mark.slow
def test_train_net_trains_resumes_and_evaluates_a_lazy_config(lazy_run_dir):
    out = lazy_run_dir / "out"
    rc, log = run_train_net(lazy_run_dir, f"train.output_dir={out}", config=TINY_LAZY)
    assert rc == 0, log[-3000:]
    assert (out / "model_final.pth").exists() and (out / "model_0000001.pth").exists()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert last_iteration(out) == 3
    assert "NonLocalBasicBlock" in log  # the printed model
    with open(out / "final_metrics.json") as f:
        assert set(json.load(f)["nonlocal_synthetic_val"]) == {"bbox", "segm"}

    rc, log = run_train_net(
        lazy_run_dir, "--resume", f"train.output_dir={out}", "train.max_iter=6", config=TINY_LAZY
    )
    assert rc == 0, log[-3000:]
    assert "Starting training from iteration 4" in log
    assert last_iteration(out) == 5

    rc, log = run_train_net(
        lazy_run_dir,
        "--eval-only",
        f"train.output_dir={lazy_run_dir / 'eval'}",
        f"train.init_checkpoint={out / 'model_final.pth'}",
        config=TINY_LAZY,
    )
    assert rc == 0, log[-3000:]
    assert "Starting training" not in log
    for task in ("bbox", "segm"):
        assert f"copypaste: Task: {task}" in log, task
    assert (lazy_run_dir / "eval" / "final_metrics.json").exists()


@pytest.mark.slow
def test_lazy_config_amp_on_cpu_says_what_to_do(lazy_run_dir):
    rc, log = run_train_net(
        lazy_run_dir,
        f"train.output_dir={lazy_run_dir / 'amp'}",
        "train.amp.enabled=True",
        config=TINY_LAZY,
    )
    assert rc != 0
    assert "train.amp.enabled=True needs a CUDA device" in log and "train.amp.enabled=False" in log
    assert "Traceback" not in log


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model.json", "model.yaml.txt", "model"])
def test_other_config_kinds_stop_with_one_line(tmp_path, name):
    (tmp_path / name).write_text("{}")
    rc, log = run_train_net(tmp_path, config=str(tmp_path / name))
    assert rc != 0
    assert (
        f"error: --config-file {tmp_path / name}: not a config kind train_net.py reads; it accepts "
        "YAML " in log
    )
    assert "(.yaml, .yml) and LazyConfig Python files (.py)" in log
    assert "Traceback" not in log
