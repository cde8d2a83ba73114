"""
Setup mistakes caught before iteration 1, at the unit: config values outside their domains, output
folders, the batch over processes, the data rules of the COCO checks, the states of a resumed
output folder, weights that do not fit, the tools' arguments. End-to-end runs of each family:
tests/test_user_errors.py.
"""

import copy
import os
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import CONFIG_DIR, REPO_ROOT, load_cfg
from nonlocal_det.errors import ConfigError, MissingInputError
from nonlocal_det.harness.data.coco_checks import (
    Needs,
    annotation_problems,
    image_problems,
)

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
needs_detectron2 = pytest.mark.detectron2

# ---------------------------------------------------------------- config values


@needs_detectron2
@pytest.mark.parametrize(
    "key,value,words",
    [
        ("SOLVER.BASE_LR", "1e999", "SOLVER.BASE_LR=inf: must be a finite number > 0"),
        ("SOLVER.BASE_LR", "-0.01", "SOLVER.BASE_LR=-0.01: must be a finite number > 0"),
        ("SOLVER.IMS_PER_BATCH", "0", "SOLVER.IMS_PER_BATCH=0: must be an int >= 1"),
        ("SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD=0: must be an int >= 1"),
        ("SOLVER.STEPS", "(300, 200)", "in increasing order"),
        ("SOLVER.MOMENTUM", "1.5", "SOLVER.MOMENTUM=1.5: must be a finite number in [0.0, 1.0)"),
        ("MODEL.DEVICE", "gpu", "MODEL.DEVICE='gpu': must be 'cpu', 'cuda' or 'cuda:N'"),
        ("DATALOADER.NUM_WORKERS", "-1", "DATALOADER.NUM_WORKERS=-1: must be an int >= 0"),
        ("INPUT.MIN_SIZE_TRAIN", "(0,)", "INPUT.MIN_SIZE_TRAIN=(0,)"),
        ("MODEL.ROI_HEADS.NUM_CLASSES", "0", "MODEL.ROI_HEADS.NUM_CLASSES=0"),
        ("MODEL.NONLOCAL.GC.RATIO", "0.0", "MODEL.NONLOCAL.GC.RATIO=0.0"),
        ("MODEL.NONLOCAL.GC.STAGES", "['res6']", "a list of distinct stages"),
        ("MODEL.NONLOCAL.DNL.TEMPERATURE", "-1.0", "MODEL.NONLOCAL.DNL.TEMPERATURE=-1.0"),
        ("TEST.EVAL_PERIOD", "-5", "TEST.EVAL_PERIOD=-5"),
    ],
)
def test_a_value_outside_its_domain_is_named_with_its_domain(key, value, words):
    with pytest.raises(ConfigError, match="quickstart.yaml with its overrides: ") as e:
        load_cfg("quickstart.yaml", key, value)
    assert words in str(e.value)


@needs_detectron2
def test_nan_in_a_yaml_file_is_named(tmp_path):
    from nonlocal_det.harness.config import get_nonlocal_cfg

    path = tmp_path / "nan.yaml"
    path.write_text(f'_BASE_: "{CONFIG_DIR}/quickstart.yaml"\nSOLVER:\n  BASE_LR: .nan\n')
    with pytest.raises(ConfigError, match="SOLVER.BASE_LR=nan: must be a finite number > 0"):
        get_nonlocal_cfg(str(path))


@needs_detectron2
def test_every_problem_of_a_config_is_listed_together():
    with pytest.raises(ConfigError, match="2 problems: ") as e:
        load_cfg("quickstart.yaml", "SOLVER.BASE_LR", "-1.0", "SOLVER.CHECKPOINT_PERIOD", "0")
    assert "SOLVER.BASE_LR" in str(e.value) and "SOLVER.CHECKPOINT_PERIOD" in str(e.value)


@needs_detectron2
@pytest.mark.parametrize(
    "text,words", [("", "is empty"), ("- a\n- b\n", "is a list, not a mapping")]
)
def test_a_yaml_file_that_is_not_a_mapping_is_named(tmp_path, text, words):
    from nonlocal_det.harness.config import get_nonlocal_cfg

    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"--config-file {path} {words}"):
        get_nonlocal_cfg(str(path))


@needs_detectron2
def test_a_renamed_key_names_its_new_name():
    with pytest.raises(
        ConfigError, match="MASK_PADDING was renamed to MODEL.NONLOCAL.VALID_REGION"
    ):
        load_cfg("quickstart.yaml", "MODEL.NONLOCAL.MASK_PADDING", "False")


@needs_detectron2
def test_every_shipped_and_zoo_config_is_inside_the_domains():
    """Merged without the loader's own check, so that config_problems is what decides."""
    from detectron2 import model_zoo
    from detectron2.config import LazyConfig

    from nonlocal_det.harness.config import default_config
    from nonlocal_det.harness.config_rules import config_problems

    files = [os.path.join(CONFIG_DIR, n) for n in sorted(os.listdir(CONFIG_DIR))]
    files += [model_zoo.get_config_file(f"{z}.yaml") for z in ZOO_CONFIGS]
    for path in files:
        if path.endswith(".yaml") and "/Base-" not in path:
            cfg = default_config()
            cfg.merge_from_file(path)
            assert config_problems(cfg) == [], path
            cfg.merge_from_list(["SOLVER.BASE_LR", "0.0"])
            assert config_problems(cfg) == ["SOLVER.BASE_LR=0.0: must be a finite number > 0.0"]
    lazy = LazyConfig.load(os.path.join(CONFIG_DIR, "mask_rcnn_R101_NL.py"))
    assert config_problems(lazy) == []
    lazy.train.max_iter = 0
    assert config_problems(lazy) == ["train.max_iter=0: must be an int >= 1"]


ZOO_CONFIGS = ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x", "Misc/semantic_R_50_FPN_1x")


@needs_detectron2
def test_lazy_config_values_are_checked_too():
    from nonlocal_det.harness.config import get_nonlocal_lazy_config

    with pytest.raises(ConfigError, match="train.max_iter=0: must be an int >= 1"):
        get_nonlocal_lazy_config(
            os.path.join(CONFIG_DIR, "mask_rcnn_R101_NL.py"), ["train.max_iter=0"]
        )


@needs_detectron2
def test_output_dir_that_is_a_file_or_cannot_be_created(tmp_path):
    from nonlocal_det.harness.preflight import check_output_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_dir(str(tmp_path / "file"), "OUTPUT_DIR")
    with pytest.raises(ConfigError, match="cannot be created"):
        check_output_dir(str(tmp_path / "file" / "below"), "OUTPUT_DIR")
    check_output_dir(str(tmp_path / "new" / "run"), "OUTPUT_DIR")
    assert (tmp_path / "new" / "run").is_dir()


@needs_detectron2
def test_a_batch_that_does_not_split_over_the_processes():
    from nonlocal_det.harness.preflight import check_world_size

    with pytest.raises(ConfigError, match="SOLVER.IMS_PER_BATCH=3 does not split over 2"):
        check_world_size(3, "SOLVER.IMS_PER_BATCH", 2)
    check_world_size(4, "SOLVER.IMS_PER_BATCH", 2)


# ---------------------------------------------------------------- data rules

GOOD = {
    "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
    "categories": [{"id": 1, "name": "person", "keypoints": ["nose", "eye"]}],
    "annotations": [
        {
            "id": 7,
            "image_id": 1,
            "category_id": 1,
            "bbox": [2, 3, 10, 12],
            "iscrowd": 0,
            "area": 120.0,
            "segmentation": [[2, 3, 12, 3, 12, 15]],
            "keypoints": [4, 5, 2, 6, 7, 1],
            "num_keypoints": 2,
        }
    ],
}
EVERYTHING = Needs(masks=True, keypoints=2, evaluated=True)


def problems_after(edit, needs=EVERYTHING):
    coco = copy.deepcopy(GOOD)
    edit(coco)
    return annotation_problems(coco, needs)


def test_a_good_file_meets_every_need():
    assert annotation_problems(GOOD, EVERYTHING) == []


@pytest.mark.parametrize(
    "edit,record,field,words",
    [
        (lambda c: c["images"].append(dict(c["images"][0], file_name="b.png")), "image 1", "id",
         "1 is used by 2 images"),
        (lambda c: c["annotations"].append(dict(c["annotations"][0])), "annotation 7", "id",
         "7 is used by 2 annotations"),
        (lambda c: c["categories"].append({"id": 1, "name": "dog"}), "category 1", "id",
         "1 is used by 2 categories"),
        (lambda c: c["images"][0].pop("height"), "image 1", "height", "not an int >= 1"),
        (lambda c: c["images"][0].update(id="1"), "image 1", "id", "is not an int"),
        (lambda c: c["annotations"][0].pop("segmentation"), "annotation 7", "segmentation",
         "has a mask head"),
        (lambda c: c["annotations"][0].update(segmentation=[]), "annotation 7", "segmentation",
         "has a mask head"),
        (lambda c: c["annotations"][0].pop("keypoints"), "annotation 7", "keypoints",
         "has a keypoint head"),
        (lambda c: c["annotations"][0].pop("area"), "annotation 7", "area", "not a finite"),
        (lambda c: c["annotations"][0].pop("iscrowd"), "annotation 7", "iscrowd", "is missing"),
        (lambda c: c["annotations"][0].update(iscrowd=2), "annotation 7", "iscrowd", "is 2"),
        (lambda c: c["annotations"][0].update(id=None), "annotation None", "id", "not an int"),
        (lambda c: c["categories"][0].pop("name"), "category 1", "name", "missing"),
    ],
)  # fmt: skip
def test_each_rule_names_the_record_and_field(edit, record, field, words):
    problems = problems_after(edit)
    assert any(
        p.record.startswith(record) and p.field == field and words in p.problem for p in problems
    ), problems


@pytest.mark.parametrize(
    "coco,field",
    [
        ([], "top level"),
        ({"images": [], "annotations": []}, "'categories'"),
        ({"images": [], "categories": []}, "'categories'"),
        ({"images": {}, "categories": [{"id": 1, "name": "a"}]}, "'images'"),
        ({"images": [], "categories": [{"id": 1, "name": "a"}], "annotations": 3}, "'annotations'"),
    ],
)
def test_a_file_of_the_wrong_shape_is_named(coco, field):
    (problem,) = annotation_problems(coco)
    assert problem.record == "the file" and problem.field == field


@pytest.mark.parametrize(
    "edit,needs",
    [
        (lambda c: c["annotations"][0].pop("segmentation"), Needs(keypoints=2, evaluated=True)),
        (lambda c: c["annotations"][0].pop("keypoints"), Needs(masks=True, evaluated=True)),
        (lambda c: [c["annotations"][0].pop(k) for k in ("area", "iscrowd")], Needs(masks=True)),
        (
            lambda c: c["annotations"][0].update(iscrowd=1, segmentation=[], keypoints=None),
            Needs(masks=True),
        ),
    ],
)
def test_what_the_model_does_not_read_is_not_required(edit, needs):
    def drop_none(c):
        edit(c)
        c["annotations"][0] = {k: v for k, v in c["annotations"][0].items() if v is not None}

    assert problems_after(drop_none, needs) == []


@pytest.mark.parametrize(
    "mode,suffix,ok",
    [("I;16", "png", False), ("F", "tif", False), ("L", "png", True), ("RGBA", "png", True)],
)
def test_image_modes_detectron2_cannot_decode_faithfully_are_named(tmp_path, mode, suffix, ok):
    if mode == "I;16":
        image = Image.fromarray(np.full((30, 40), 4000, np.uint16))
    elif mode == "F":
        image = Image.fromarray(np.full((30, 40), 0.5, np.float32))
    else:
        image = Image.fromarray(np.zeros((30, 40), np.uint8)).convert(mode)
    image.save(tmp_path / f"a.{suffix}")
    assert Image.open(tmp_path / f"a.{suffix}").mode == mode
    coco = copy.deepcopy(GOOD)
    coco["images"][0]["file_name"] = f"a.{suffix}"
    problems = image_problems(coco, str(tmp_path))
    assert (problems == []) == ok
    if not ok:
        assert "pixel mode" in problems[0].problem and "blank image" in problems[0].problem


# ---------------------------------------------------------------- resume states and weights


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))


def _save(path, model):
    torch.save({"model": model.state_dict(), "iteration": 9}, path)


@needs_detectron2
def test_resume_states_of_an_output_folder(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    from nonlocal_det.harness.checkpoint import resumed_checkpoint

    checkpointer = DetectionCheckpointer(_model(), str(tmp_path))
    assert resumed_checkpoint(checkpointer) is None  # no checkpoint: start from the weights
    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
    with pytest.raises(MissingInputError, match="model_0000099.pth .*is not a file"):
        resumed_checkpoint(checkpointer)
    _save(tmp_path / "model_0000099.pth", _model())
    assert resumed_checkpoint(checkpointer) == str(tmp_path / "model_0000099.pth")
    data = (tmp_path / "model_0000099.pth").read_bytes()
    (tmp_path / "model_0000099.pth").write_bytes(data[: len(data) // 2])  # a truncated copy
    with pytest.raises(MissingInputError) as e:
        resumed_checkpoint(checkpointer)
    message = str(e.value)
    assert "model_0000099.pth" in message and "truncated or damaged" in message
    assert "without --resume" in message and "MODEL.WEIGHTS" not in message


@needs_detectron2
def test_a_checkpoint_of_another_model_is_refused_for_resume(tmp_path):
    from nonlocal_det.harness.checkpoint import CheckedCheckpointer, require_fit

    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8))
    _save(tmp_path / "model_final.pth", other)
    checkpointer = CheckedCheckpointer(_model())
    checkpointer.load(str(tmp_path / "model_final.pth"))
    with pytest.raises(ConfigError) as e:
        require_fit(checkpointer, str(tmp_path / "model_final.pth"), allow_unmatched=False)
    assert "model_final.pth does not fit" in str(e.value) and "0.weight" in str(e.value)
    assert "--allow-unmatched-weights" in str(e.value)
    require_fit(checkpointer, str(tmp_path / "model_final.pth"), allow_unmatched=True)
    _save(tmp_path / "model_final.pth", _model())
    checkpointer.load(str(tmp_path / "model_final.pth"))
    require_fit(checkpointer, str(tmp_path / "model_final.pth"), allow_unmatched=False)


@needs_detectron2
def test_resume_applies_the_configs_optimizer_settings_over_the_checkpoints(caplog):
    """The optimizer and LR-scheduler state a checkpoint holds (lr 0.02) gives way to the config."""
    from detectron2.solver import LRMultiplier, WarmupParamScheduler
    from fvcore.common.param_scheduler import MultiStepParamScheduler

    from nonlocal_det.harness.checkpoint import keep_config_settings, optimizer_settings

    def trainer_parts(lr):
        optimizer = torch.optim.SGD(_model().parameters(), lr=lr, momentum=0.9)
        steps = WarmupParamScheduler(
            MultiStepParamScheduler([1, 0.1], milestones=[50], num_updates=100), 0.1, 0.1
        )
        return optimizer, LRMultiplier(optimizer, steps, max_iter=100)

    saved_optimizer, saved_scheduler = trainer_parts(0.02)
    for _ in range(60):
        saved_optimizer.step(), saved_scheduler.step()
    optimizer, scheduler = trainer_parts(0.0001)
    configured = optimizer_settings(optimizer, scheduler)
    optimizer.load_state_dict(saved_optimizer.state_dict())
    scheduler.load_state_dict(saved_scheduler.state_dict())
    assert scheduler.base_lrs == [0.02]  # what Detectron2's resume alone would train with
    keep_config_settings(optimizer, scheduler, configured, "model_0000059.pth")
    assert scheduler.base_lrs == [0.0001] and scheduler.last_epoch == 60
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0001 * 0.1)  # after the step at 50
    assert "group 0 base_lr 0.02 -> 0.0001" in caplog.text


@needs_detectron2
def test_weights_that_do_not_fit_are_refused_for_evaluation(tmp_path):
    from nonlocal_det.harness.checkpoint import load_trained_weights

    model = _model()
    extra = torch.nn.Sequential(*model, torch.nn.Conv2d(4, 4, 1))
    _save(tmp_path / "w.pth", extra)
    flag = "--allow-unmatched-weights"
    with pytest.raises(ConfigError) as e:
        load_trained_weights(model, str(tmp_path / "w.pth"), random_ok=False, flag=flag)
    assert "MODEL.WEIGHTS=" in str(e.value) and "w.pth" in str(e.value)
    assert "2 the model does not have (2.weight, 2.bias)" in str(e.value)
    assert flag in str(e.value)
    with pytest.raises(ConfigError, match=f"MODEL.WEIGHTS is empty: .* {flag}"):
        load_trained_weights(model, "", random_ok=False, flag=flag)


# ---------------------------------------------------------------- the tools' arguments


@needs_detectron2
@pytest.mark.parametrize(
    "tool,argv,words",
    [
        ("benchmark_blocks", ["--repeats", "0"], "argument --repeats: 0 is not an int >= 1"),
        ("benchmark_blocks", ["--sizes", "foo"], "invalid choice: 'foo'"),
        ("benchmark_blocks", ["--memory-limit-gb", "nan"], "is not a finite number"),
        ("analyze_model", ["--size", "-1", "5"], "argument --size: -1 is not a side of 32"),
        ("analyze_model", ["--overhead-table", "--pairs", "a.yaml"], "is not baseline.yaml:"),
        (
            "analyze_model",
            ["--overhead-table", "--pairs", "a.yaml:b.yaml"],
            "a.yaml is not a file of configs/",
        ),
        ("analyze_model", [], "--config-file is required"),
        ("demo", ["--input", "i", "--output", "o"], "required: --config-file"),
        ("benchmark_blocks", ["--cycles", "-2"], "argument --cycles: -2 is not an int >= 1"),
        ("attention_mass", ["--config-file", "x.yaml", "--max-images", "0"], "--max-images: 0"),
        ("time_data_checks", ["--images", "zero"], "'zero' is not an int"),
        ("seeds_report", ["d", "--config-files", "c", "--seeds", "-1"], "-1 is not an int >= 0"),
        ("run_seeds", ["--num-gpus", "0"], "argument --num-gpus: 0 is not an int >= 1"),
        (
            "demo",
            ["--config-file", "c", "--input", "i", "--output", __file__],
            "is a file; name a folder",
        ),
    ],
)
def test_tools_refuse_arguments_outside_their_domains_at_parse_time(tool, argv, words, capsys):
    import importlib

    module = importlib.import_module(tool)
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    assert e.value.code == 2  # argparse's usage error: one line, no traceback
    assert words in capsys.readouterr().err


# ---------------------------------------------------------------- rules across keys and files


@needs_detectron2
@pytest.mark.parametrize(
    "opts,words",
    [
        (["INPUT.MAX_SIZE_TRAIN", "100"], "INPUT.MAX_SIZE_TRAIN=100 is below INPUT.MIN_SIZE_TRAIN"),
        (
            ["INPUT.MIN_SIZE_TRAIN_SAMPLING", "range", "INPUT.MIN_SIZE_TRAIN", "(192,)"],
            "draws between two sizes",
        ),
        (["MODEL.PIXEL_STD", "[1.0, 1.0]"], "MODEL.PIXEL_MEAN has 3 values and MODEL.PIXEL_STD 2"),
    ],
)
def test_values_that_must_agree_with_each_other(opts, words):
    with pytest.raises(ConfigError, match=words):
        load_cfg("quickstart.yaml", *opts)


@needs_detectron2
@pytest.mark.parametrize(
    "files,words",
    [
        ({"a.yaml": "_BASE_: a.yaml\n"}, "_BASE_ leads in a circle: {d}/a.yaml -> {d}/a.yaml"),
        ({"a.yaml": "_BASE_: b.yaml\n", "b.yaml": "_BASE_: a.yaml\n"}, "leads in a circle"),
        ({"a.yaml": "_BASE_: gone.yaml\n"}, "_BASE_ {d}/gone.yaml (named by {d}/a.yaml)"),
        (
            {"a.yaml": "SOLVER:\n  BASE_LR: 0.1\nSOLVER:\n  MAX_ITER: 9\n"},
            "key SOLVER is given twice",
        ),
    ],
)
def test_mistakes_in_the_yaml_files_themselves_are_named(tmp_path, files, words):
    from nonlocal_det.harness.config import get_nonlocal_cfg

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=re.escape(words.format(d=tmp_path))):
        get_nonlocal_cfg(str(tmp_path / "a.yaml"))


@needs_detectron2
@pytest.mark.parametrize(
    "argv,words",
    [
        (["--num-machines", "2"], "that address is this machine's own"),
        (["--num-machines", "2", "--dist-url", "auto"], "that address is this machine's own"),
        (["--machine-rank", "1"], "--machine-rank 1 of --num-machines 1"),
        (["--num-gpus", "0"], "--num-gpus and --num-machines must be at least 1"),
    ],
)
def test_a_launch_that_could_not_start_is_named_at_once(argv, words):
    from detectron2.engine import default_argument_parser

    from nonlocal_det.harness.engine.launch import check_machines

    with pytest.raises(ConfigError, match=words):
        check_machines(default_argument_parser().parse_args(argv))


@needs_detectron2
def test_machines_on_this_host_by_an_explicit_loopback_address_may_start():
    from detectron2.engine import default_argument_parser

    from nonlocal_det.harness.engine.launch import check_machines

    argv = ["--num-machines", "2", "--dist-url", "tcp://127.0.0.1:29500"]
    assert check_machines(default_argument_parser().parse_args(argv)) is None


@needs_detectron2
def test_a_machine_that_cannot_reach_machine_0_stops_within_the_wait(monkeypatch):
    from detectron2.engine import default_argument_parser

    from nonlocal_det.errors import UnsupportedSetupError
    from nonlocal_det.harness.engine.launch import check_machines

    def refused(address, timeout):  # machine 0 is not listening (yet)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr("socket.create_connection", refused)
    monkeypatch.setenv("NONLOCAL_DET_DIST_WAIT", "1")
    args = default_argument_parser().parse_args(
        ["--num-machines", "2", "--machine-rank", "1", "--dist-url", "tcp://10.0.0.1:29500"]
    )
    with pytest.raises(UnsupportedSetupError, match="could not be reached for 1 s"):
        check_machines(args)


@pytest.mark.parametrize("text", ["{", "[]", '{"run": {}}'])
def test_a_damaged_run_summary_is_named(tmp_path, text):
    from nonlocal_det.errors import BadDataError
    from nonlocal_det.harness.cli.seed_runs import load_summary

    (tmp_path / "seed0.json").write_text(text)
    with pytest.raises(BadDataError, match=f"{tmp_path}/seed0.json is not a run summary"):
        load_summary(str(tmp_path / "seed0.json"))


@needs_detectron2
@pytest.mark.parametrize(
    "opts, builder, key",
    [
        (
            ["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "relative_rang"],
            "mapper",
            "INPUT.CROP.TYPE='relative_rang'",
        ),
        (
            ["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[-0.5, 1.0]]"],
            "model",
            "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS=[[-0.5, 1.0]]",
        ),
    ],
    ids=["crop type typo", "negative aspect ratio"],
)
def test_a_detectron2_builder_failure_in_the_dry_run_is_one_line_naming_the_key(opts, builder, key):
    """Detectron2's own builder rejects the value (a bare assert, a math error); the dry run's
    wrapper says which stage, quotes the failed line, and names the key before any other."""
    from detectron2.data import DatasetMapper
    from detectron2.modeling import build_model

    from nonlocal_det.harness.dry_run import explaining_failures

    build = {"mapper": lambda cfg: DatasetMapper(cfg, is_train=True), "model": build_model}
    cfg = load_cfg("quickstart.yaml", *opts)
    with pytest.raises(ConfigError) as raised:
        with explaining_failures(cfg, "the stage under test", "INPUT"):
            build[builder](cfg)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("dry run, the stage under test: ")
    assert message.split("; check ", 1)[1].startswith(key), message
    assert message.endswith("(DRY_RUN False skips the dry run)")
