"""
User mistakes end to end through train_net.py or a tool: a non-zero exit, the message naming the
file, record or key (and the fix), no traceback, and for bad data no training iteration. The
annotation checks themselves: tests/test_coco_checks.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import CONFIG_DIR, REPO_ROOT, TINY, generate_synthetic_under, run_train_net

pytestmark = pytest.mark.detectron2

TOOLS = os.path.join(REPO_ROOT, "tools")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The small generated dataset under workdir/datasets, and a trained-shaped checkpoint."""
    root = generate_synthetic_under(tmp_path_factory.mktemp("user_errors"), train=6, val=2)
    return root


def fresh_copy(workdir, tmp_path):
    import shutil

    shutil.copytree(workdir / "datasets", tmp_path / "datasets")
    return tmp_path


def assert_user_error(rc, log, *named):
    assert rc != 0, log[-2000:]
    assert "Traceback" not in log, log[-3000:]
    for words in named:
        assert words in log, (words, log[-2000:])


def assert_nothing_trained(log):
    assert "Starting training" not in log and " iter: " not in log


def run_tool(cwd, tool, *args):
    env = dict(os.environ, DETECTRON2_DATASETS=str(cwd / "datasets"))
    env.pop("NONLOCAL_DET_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(TOOLS, tool), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc.returncode, proc.stdout + proc.stderr


# ---------------------------------------------------------------- data


def _edit_train_json(root, edit):
    path = root / "datasets" / "nonlocal_synthetic" / "annotations" / "train.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.slow
def test_negative_box_width_stops_before_training(workdir, tmp_path):
    root = fresh_copy(workdir, tmp_path)

    def negative_width(data):
        data["annotations"][3]["bbox"][2] = -20.0

    json_file = _edit_train_json(root, negative_width)
    rc, log = run_train_net(root, *TINY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(root / "o"))
    assert_user_error(rc, log, str(json_file), "annotation 4 ", "bbox", "negative width")
    assert_nothing_trained(log)


@pytest.mark.slow
def test_file_that_is_not_an_image_stops_before_training(workdir, tmp_path):
    root = fresh_copy(workdir, tmp_path)
    image = root / "datasets" / "nonlocal_synthetic" / "train" / "000002.png"
    image.write_text("not a png")
    rc, log = run_train_net(root, *TINY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(root / "o"))
    assert_user_error(rc, log, str(image), "is not an image", "DATALOADER.CHECK_IMAGES False")
    assert_nothing_trained(log)


@pytest.mark.slow
def test_several_problems_are_listed_together(workdir, tmp_path):
    root = fresh_copy(workdir, tmp_path)

    def several(data):
        data["annotations"][0]["bbox"][3] = float("nan")
        data["annotations"][1]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]
        data["annotations"][2]["category_id"] = 9
        data["images"][1]["width"] = 300

    _edit_train_json(root, several)
    rc, log = run_train_net(root, *TINY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(root / "o"))
    assert_user_error(
        rc,
        log,
        "4 problem(s)",
        "annotation 1 ",
        "annotation 2 ",
        "annotation 3 ",
        "300x192 in the JSON, but the file is 256x192",
    )
    assert_nothing_trained(log)


@pytest.mark.slow
def test_image_checks_can_be_skipped(workdir, tmp_path):
    """
    DATALOADER.CHECK_IMAGES False skips the image-file rules: a JSON width that is not the
    file's passes them, and is then Detectron2's own error, which the dry run meets first, on
    that record, before any training iteration.
    """
    root = fresh_copy(workdir, tmp_path)
    _edit_image_record(root, lambda images: images[0].update(width=300))
    common = [*TINY, "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(root / "o")]
    rc, log = run_train_net(root, *common)
    assert_user_error(rc, log, "300x192 in the JSON, but the file is 256x192")
    rc, log = run_train_net(root, *common, "DATALOADER.CHECK_IMAGES", "False")
    assert_user_error(rc, log, "dry run, training augmentations and mapper on ", "000001.png")
    assert "in the JSON, but the file is" not in log
    assert_nothing_trained(log)


# ---------------------------------------------------------------- weights


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_unreadable_weights_are_named_by_train_net_and_demo(workdir, tmp_path, kind):
    weights = tmp_path / "model.pth"
    if kind == "text":
        weights.write_text("these are not weights\n")
    else:
        torch.save({"model": {"w": torch.zeros(1000)}}, weights)
        weights.write_bytes(weights.read_bytes()[:-300])
    rc, log = run_train_net(
        workdir,
        "--eval-only",
        *TINY,
        "MODEL.WEIGHTS",
        str(weights),
        "OUTPUT_DIR",
        str(tmp_path / "o"),
    )
    assert_user_error(rc, log, f"MODEL.WEIGHTS='{weights}'")
    image = workdir / "datasets" / "nonlocal_synthetic" / "val" / "000001.png"
    rc, log = run_tool(
        workdir,
        "demo.py",
        "--config-file",
        os.path.join(CONFIG_DIR, "quickstart.yaml"),
        "--input",
        str(image),
        "--output",
        str(tmp_path / "d"),
        "MODEL.WEIGHTS",
        str(weights),
    )
    assert_user_error(rc, log, f"MODEL.WEIGHTS='{weights}'")


@pytest.mark.slow
def test_tools_refuse_random_and_mismatched_weights(workdir, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from helpers import load_cfg

    image = workdir / "datasets" / "nonlocal_synthetic" / "val" / "000001.png"
    quickstart = os.path.join(CONFIG_DIR, "quickstart.yaml")
    demo = ["--input", str(image), "--output", str(tmp_path / "d")]
    rc, log = run_tool(workdir, "demo.py", "--config-file", quickstart, *demo)
    assert_user_error(rc, log, "MODEL.WEIGHTS is empty", "--random-weights")
    # a checkpoint of the quickstart model with CGNL... of another block: W_z of another width
    model = build_model(load_cfg("quickstart.yaml", "MODEL.NONLOCAL.REDUCTION", "4"))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("other")
    other = str(tmp_path / "other.pth")
    rc, log = run_tool(
        workdir, "attention_mass.py", "--config-file", quickstart, "MODEL.WEIGHTS", other
    )
    assert_user_error(
        rc, log, f"MODEL.WEIGHTS='{other}' does not fit", "of another shape", "--random-weights"
    )
    rc, log = run_tool(workdir, "demo.py", "--config-file", quickstart, *demo, "--random-weights")
    assert rc == 0, log[-2000:]


# ---------------------------------------------------------------- configs


@pytest.mark.slow
@pytest.mark.parametrize(
    "opts,named",
    [
        (["MODEL.NONLOCAL.MODE", "softmax"], "MODEL.NONLOCAL.MODE='softmax' is not one of"),
        (["MODEL.NONLOCAL.RES4", "[7]"], "MODEL.NONLOCAL.RES4 = [7]: block index 7 does not exist"),
        (["MODEL.NONLOCAL.NORM", "FrozenBN"], "MODEL.NONLOCAL.NORM='FrozenBN' is not allowed"),
        (["MODEL.NONLOCAL.NORM", "bogus"], "MODEL.NONLOCAL.NORM='bogus' is not a known norm"),
        (
            ["MODEL.NONLOCAL.MOD", "softmax"],
            "MODEL.NONLOCAL.MOD is not a config key; did you mean MODEL.NONLOCAL.MODE?",
        ),
        (["--eval-only"], "--eval-only comes after the config overrides"),
    ],
)
def test_bad_config_values_and_keys_in_one_line(workdir, opts, named):
    rc, log = run_train_net(workdir, *TINY, *opts, "OUTPUT_DIR", str(workdir / "c"))
    assert_user_error(rc, log, named)
    error_lines = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and named in error_lines[0]


@pytest.mark.slow
def test_yaml_syntax_error_and_debug_traceback(workdir, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text(
        f"_BASE_: {os.path.join(CONFIG_DIR, 'quickstart.yaml')}\nMODEL:\n  NONLOCAL:\n    MODE: "
        "[unclosed\n"
    )
    rc, log = run_train_net(workdir, "--config-file", str(config), config=None)
    assert_user_error(rc, log, f"--config-file {config} is not valid YAML", "line 4")
    rc, log = run_train_net(workdir, "--debug", "--config-file", str(config), config=None)
    assert rc != 0 and "Traceback" in log and "ConfigError" in log


@pytest.mark.slow
@pytest.mark.parametrize(
    "zoo_config,expected",
    [
        ("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x.yaml", "'build_resnet_backbone'"),
        ("COCO-Detection/retinanet_R_50_FPN_3x.yaml", "'build_retinanet_resnet_fpn_backbone'"),
    ],
)
def test_readme_keys_on_c4_and_retinanet_name_the_backbone_to_use(workdir, zoo_config, expected):
    from detectron2 import model_zoo

    rc, log = run_train_net(
        workdir,
        "--config-file",
        model_zoo.get_config_file(zoo_config),
        "--eval-only",
        "MODEL.DEVICE",
        "cpu",
        "MODEL.WEIGHTS",
        "",
        "MODEL.BACKBONE.NAME",
        "build_nonlocal_backbone",
        "DATASETS.TEST",
        "('nonlocal_synthetic_val',)",
        config=None,
    )
    assert_user_error(rc, log, "MODEL.NONLOCAL.BACKBONE_NAME='build_resnet_fpn_backbone'", expected)


# ---------------------------------------------------------------- the attention tools


@pytest.mark.slow
def test_visualize_attention_queries_and_overrides(workdir, tmp_path):
    image = workdir / "datasets" / "nonlocal_synthetic" / "val" / "000001.png"
    args = [
        "--config-file",
        os.path.join(CONFIG_DIR, "quickstart.yaml"),
        "--input",
        str(image),
        "--output",
        str(tmp_path),
        "--random-weights",
    ]
    rc, log = run_tool(
        workdir,
        "visualize_attention.py",
        *args,
        "--queries",
        "100,50",
        "--queries",
        "200,100",
        "INPUT.MIN_SIZE_TEST",
        "128",
        "MODEL.WEIGHTS",
        "",
    )
    assert rc == 0, log[-2000:]
    rc, log = run_tool(
        workdir, "visualize_attention.py", *args, "--queries", "300,50", "MODEL.WEIGHTS", ""
    )
    assert_user_error(rc, log, "--queries [(300.0, 50.0)] lie outside the 256x192 image")
    cgnl = os.path.join(CONFIG_DIR, "mask_rcnn_R50_CGNL.yaml")
    rc, log = run_tool(
        workdir,
        "visualize_attention.py",
        *args[2:],
        "--config-file",
        cgnl,
        "MODEL.WEIGHTS",
        "",
        "MODEL.RESNETS.DEPTH",
        "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        "64",
    )
    assert_user_error(rc, log, "CGNL blocks", "no per-query attention map")


def test_benchmark_tools_write_under_output_by_default():
    """A smoke run never writes over the committed tables under docs/."""
    sys.path.insert(0, TOOLS)
    import analyze_model
    import benchmark_blocks

    assert benchmark_blocks.parse_args([]).output == os.path.join("output", "benchmarks.md")
    assert benchmark_blocks.parse_args(["--padding"]).output.startswith("output")
    source = open(analyze_model.__file__).read()
    assert "--output docs/" not in source  # documented commands write under output/ too


# ------------------------------------- setup values, data and output folders, end to end


def _edit_image_record(root, edit):
    return _edit_train_json(root, lambda data: edit(data["images"]))


def _sixteen_bit_png(root):
    image = root / "datasets" / "nonlocal_synthetic" / "train" / "000002.png"
    height, width = np.asarray(Image.open(image)).shape[:2]
    Image.fromarray(np.full((height, width), 40000, np.uint16)).save(image)
    return []


def _weights_of_another_model(root):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from helpers import load_cfg

    model = build_model(load_cfg("mask_rcnn_R50_baseline.yaml", *TINY[2:]))
    DetectionCheckpointer(model, save_dir=str(root)).save("baseline")
    return ["--eval-only"], ["MODEL.WEIGHTS", str(root / "baseline.pth")]


def _last_checkpoint_naming(root, content=None):
    out = root / "o"
    out.mkdir(exist_ok=True)
    (out / "last_checkpoint").write_text("model_0000099.pth")
    if content is not None:
        (out / "model_0000099.pth").write_bytes(content)
    return ["--resume"]


def _truncated_checkpoint(root):
    torch.save({"model": {"w": torch.zeros(1000)}}, root / "full.pth")
    return _last_checkpoint_naming(root, (root / "full.pth").read_bytes()[:-300])


def _config_file(root, text):
    path = root / "bad.yaml"
    path.write_text(text)
    return ["--config-file", str(path)]


QUICKSTART = os.path.join(CONFIG_DIR, "quickstart.yaml")
# (case, setup(root) -> extra arguments before the overrides, overrides, words in the one line)
SETUP_AND_DATA_MISTAKES = [
    ("duplicate image id", lambda r: _edit_image_record(r, lambda im: im[1].update(id=im[0]["id"]))
     and [], [], "is used by 2 images"),
    ("16-bit PNG", _sixteen_bit_png, [], "pixel mode 'I;16'"),
    ("segmentation []", lambda r: _edit_train_json(
        r, lambda d: d["annotations"][0].update(segmentation=[])) and [], [], "has a mask head"),
    ("no segmentation", lambda r: _edit_train_json(
        r, lambda d: d["annotations"][0].pop("segmentation")) and [], [], "has a mask head"),
    ("duplicate annotation id", lambda r: _edit_train_json(
        r, lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"])) and [], [],
     "is used by 2 annotations"),
    ("no categories", lambda r: _edit_train_json(r, lambda d: d.pop("categories")) and [], [],
     "'categories' is missing"),
    ("no height, image checks off", lambda r: _edit_image_record(
        r, lambda im: im[0].pop("height")) and [], ["DATALOADER.CHECK_IMAGES", "False"],
     "height is None, not an int >= 1"),
    ("checkpoint period 0", lambda r: [], ["SOLVER.CHECKPOINT_PERIOD", "0"],
     "SOLVER.CHECKPOINT_PERIOD=0: must be an int >= 1"),
    ("base lr nan in a file", lambda r: _config_file(
        r, f'_BASE_: "{CONFIG_DIR}/mask_rcnn_R50_NL.yaml"\nSOLVER:\n  BASE_LR: .nan\n'), [],
     "SOLVER.BASE_LR=nan: must be a finite number > 0"),
    ("negative base lr", lambda r: [], ["SOLVER.BASE_LR", "-0.1"], "SOLVER.BASE_LR=-0.1"),
    ("batch of 0", lambda r: [], ["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH=0"),
    ("device gpu", lambda r: [], ["MODEL.DEVICE", "gpu"], "MODEL.DEVICE='gpu'"),
    ("workers -1", lambda r: [], ["DATALOADER.NUM_WORKERS", "-1"], "DATALOADER.NUM_WORKERS=-1"),
    ("empty yaml", lambda r: _config_file(r, ""), [], "is empty"),
    ("output dir is a file", lambda r: (r / "o").write_text("x") and [], [],
     "OUTPUT_DIR="),
    ("eval-only, weights of another model", _weights_of_another_model, [],
     "does not fit the config's model"),
    ("resume, last_checkpoint names a missing file", _last_checkpoint_naming, [],
     "last_checkpoint) is not a file"),
    ("resume, truncated checkpoint", _truncated_checkpoint, [], "truncated or damaged"),
]  # fmt: skip


def _edit_json(root, split, edit):
    path = root / "datasets" / "nonlocal_synthetic" / "annotations" / f"{split}.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return []


def _swap_names(data, a="circle", b="square"):
    for category in data["categories"]:
        category["name"] = {a: b, b: a}.get(category["name"], category["name"])


def _xyxy(data):
    for annotation in data["annotations"]:
        x, y, w, h = annotation["bbox"]
        annotation["bbox"] = [x, y, x + w, y + h]


def _shift_polygons(data):
    for annotation in data["annotations"][:3]:
        annotation["segmentation"] = [
            [v + 60 * (k % 2 == 0) for k, v in enumerate(poly)]
            for poly in annotation["segmentation"]
        ]


def _rle(data):
    from pycocotools import mask as mask_util

    image = {im["id"]: im for im in data["images"]}
    for annotation in data["annotations"]:
        im = image[annotation["image_id"]]
        rles = mask_util.frPyObjects(annotation["segmentation"], im["height"], im["width"])
        rle = mask_util.merge(rles)
        annotation["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}


def _visible_but_none_counted(data):
    person = next(a for a in data["annotations"] if a["num_keypoints"] > 0)
    person["num_keypoints"] = 0


def _cut_image(root):
    image = root / "datasets" / "nonlocal_synthetic" / "train" / "000003.png"
    image.write_bytes(image.read_bytes()[:-2000])
    return []


def _lost_marker(root):
    """A generated file the user edited: it is theirs now, and must not be regenerated over."""
    path = root / "datasets" / "nonlocal_synthetic" / "annotations" / "train.json"
    data = json.loads(path.read_text())
    data["info"].pop("version")
    path.write_text("\ufeff" + json.dumps(data), encoding="utf-8")  # and a BOM, as editors write
    (path.parent / "val.json").unlink()  # a split to generate: the edited one is in the way
    return []


def _generated_under(root):
    """The quickstart's dataset as its generator writes it (with its marker)."""
    from nonlocal_det.harness.data import synthetic

    synthetic.generate(str(root / "datasets" / "nonlocal_synthetic"), {"train": 6, "val": 2})


def _base_cycle(root):
    (root / "a.yaml").write_text("_BASE_: b.yaml\n")
    (root / "b.yaml").write_text("_BASE_: a.yaml\n")
    return ["--config-file", str(root / "a.yaml")]


# The third round of mistakes: every split the run reads, fields that disagree, what crashed
# after "Starting training", Detectron2's own assertions, _BASE_ cycles, a launch that cannot
# start. (case, setup(root) -> extra arguments, overrides, words in the one line)
THIRD_ROUND = [
    ("val category ids swapped", lambda r: _edit_json(r, "val", _swap_names), [],
     "is 'square' here, 'circle' in training"),
    ("val without num_keypoints", lambda r: _edit_json(
        r, "val", lambda d: [a.pop("num_keypoints") for a in d["annotations"]]), [],
     "num_keypoints is missing"),
    ("XYXY boxes", lambda r: _edit_json(r, "train", _xyxy), [], "(not [x0, y0, x1, y1])"),
    ("polygons off their boxes", lambda r: _edit_json(r, "train", _shift_polygons), [],
     "outside its bbox"),
    ("num_keypoints 0 with visible keypoints", lambda r: _edit_json(
        r, "train", _visible_but_none_counted), [], "keypoints have v > 0"),
    ("RLE masks, polygon format", lambda r: _edit_json(r, "train", _rle), [],
     "set INPUT.MASK_FORMAT 'bitmask'"),
    ("bad RLE counts", lambda r: _edit_json(r, "train", lambda d: _rle(d) or d["annotations"][
        0]["segmentation"].update(counts="abc")), ["INPUT.MASK_FORMAT", "bitmask"],
     "does not decode"),
    ("an image cut short", _cut_image, [], "is cut short"),
    ("CGNL order 40", lambda r: [], ["MODEL.NONLOCAL.BLOCK", "CGNL", "MODEL.NONLOCAL.CGNL.ORDER",
     "40"], "MODEL.NONLOCAL.CGNL.ORDER=40: must be an int in [0, 33]"),
    ("crop type with a typo", lambda r: [], ["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE",
     "relative_rnage"], "INPUT.CROP.TYPE='relative_rnage'"),
    ("negative anchor aspect ratio", lambda r: [],
     ["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[-0.5, 1.0, 2.0]]"],
     "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"),
    ("no training dataset", lambda r: [], ["DATASETS.TRAIN", "()"], "DATASETS.TRAIN is empty"),
    ("a _BASE_ cycle", _base_cycle, [], "_BASE_ leads in a circle"),
    ("two machines, this machine's address", lambda r: ["--num-machines", "2"], [],
     "that address is this machine's own"),
    ("an edited generated file", _lost_marker, [], "it is not overwritten"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case,setup,overrides,words", THIRD_ROUND, ids=[c[0] for c in THIRD_ROUND])
def test_third_round_mistakes_stop_before_training_in_one_line(
    workdir, tmp_path, case, setup, overrides, words
):
    root = fresh_copy(workdir, tmp_path)
    if case == "an edited generated file":
        _generated_under(root)
    flags = setup(root) or []
    before = {p: p.read_bytes() for p in (root / "datasets").rglob("*.json")}
    config = None if "--config-file" in flags else "quickstart.yaml"
    rc, log = run_train_net(
        root, *flags, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(root / "o"), *overrides,
        config=config,
    )  # fmt: skip
    assert_user_error(rc, log, words)
    assert_nothing_trained(log)
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    if case == "an edited generated file":
        assert all(p.read_bytes() == data for p, data in before.items() if p.exists())


def _without(opts, key):
    """``opts`` (KEY VALUE ...) without ``key``'s pair."""
    pairs = list(zip(opts[::2], opts[1::2]))
    return [x for k, v in pairs if k != key for x in (k, v)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case,setup,overrides,words",
    SETUP_AND_DATA_MISTAKES,
    ids=[c[0] for c in SETUP_AND_DATA_MISTAKES],
)
def test_setup_and_data_mistakes_stop_before_training_in_one_line(
    workdir, tmp_path, case, setup, overrides, words
):
    root = fresh_copy(workdir, tmp_path)
    extra = setup(root) or []
    flags, opts = extra if isinstance(extra, tuple) else (extra, [])
    if "--config-file" not in flags:
        flags = ["--config-file", os.path.join(CONFIG_DIR, "mask_rcnn_R50_NL.yaml"), *flags]
    tiny = _without(TINY, "SOLVER.BASE_LR") if "bad.yaml" in " ".join(flags) else TINY
    rc, log = run_train_net(
        root, *flags, *tiny, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(root / "o"),
        *opts, *overrides, config=None,
    )  # fmt: skip
    assert_user_error(rc, log, words)
    assert_nothing_trained(log)
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors  # one message (a data message lists its problems below it)
