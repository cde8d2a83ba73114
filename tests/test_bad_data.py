"""
Bad and unusual data: each case trains correctly or stops with a message naming the file and the
problem.
"""

import json
import os
import re
import shutil

import cv2
import numpy as np
import pytest

from helpers import TINY, load_cfg, run_train_net, training_records

pytestmark = pytest.mark.detectron2

DATASET_OPTS = [
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "4",
    "MODEL.KEYPOINT_ON",
    "True",
    "MODEL.MASK_ON",
    "True",
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from nonlocal_det.harness.data import synthetic

    root = tmp_path_factory.mktemp("pristine") / "nonlocal_synthetic"
    synthetic.generate(str(root), {"train": 6, "val": 4})
    return root


@pytest.fixture
def dataset(pristine, tmp_path):
    """A fresh copy of the small generated dataset: (root, train json path, loaded train json)."""
    root = tmp_path / "datasets" / "nonlocal_synthetic"
    shutil.copytree(pristine, root)
    json_file = root / "annotations" / "train.json"
    with open(json_file) as f:
        return root, json_file, json.load(f)


def _save(json_file, data):
    with open(json_file, "w") as f:
        json.dump(data, f)


def _register(name, root, split="train"):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    register_coco_instances(
        name, {}, str(root / "annotations" / f"{split}.json"), str(root / split)
    )
    from nonlocal_det.harness.data import synthetic

    MetadataCatalog.get(name).keypoint_names = synthetic.KEYPOINT_NAMES


def _cfg(name, *opts):
    return load_cfg("mask_rcnn_R50_NL.yaml", *DATASET_OPTS, "DATASETS.TRAIN", f"('{name}',)", *opts)


def _training_error(name, root, *opts):
    from nonlocal_det.harness.data.loading import training_dataset_dicts
    from nonlocal_det.harness.preflight import BadDataError

    _register(name, root)
    with pytest.raises(BadDataError) as info:
        training_dataset_dicts(_cfg(name, *opts))
    return str(info.value)


def test_missing_image_file_is_named(dataset):
    root, json_file, data = dataset
    missing = root / "train" / data["images"][2]["file_name"]
    os.remove(missing)
    message = _training_error("bad_missing_image", root)
    image = data["images"][2]
    assert f"image {image['id']} ({image['file_name']}): file_name {missing} does not exist" in (
        message
    )
    # Without the image-file checks, the records' files are still looked for.
    message = _training_error("bad_missing_image", root, "DATALOADER.CHECK_IMAGES", "False")
    # (counted among the records the run would use: Detectron2's filters run first)
    assert str(missing) in message and re.search(r"1 of [56] image files", message)
    assert "do not exist" in message


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_annotation_json_is_named(dataset, cut):
    root, json_file, _ = dataset
    text = json_file.read_text()
    json_file.write_text(text[: int(len(text) * cut)])
    message = _training_error("bad_truncated_json", root)
    assert (
        str(json_file) in message
        and "not valid JSON" in message
        and "truncated or corrupt" in message
    )


def test_category_id_missing_from_the_file_is_named(dataset):
    root, json_file, data = dataset
    data["annotations"][0]["category_id"] = 99
    _save(json_file, data)
    message = _training_error("bad_unknown_category", root)
    assert (
        str(json_file) in message and "category_id 99 is not among the file's categories" in message
    )


def test_more_categories_than_the_model_predicts_is_an_error(dataset):
    """A 5th category with NUM_CLASSES=4 would silently train its boxes as background."""
    root, json_file, data = dataset
    data["categories"].append({"id": 5, "name": "hexagon"})
    data["annotations"][0]["category_id"] = 5
    _save(json_file, data)
    message = _training_error("bad_extra_category", root)
    image = data["images"][
        [im["id"] for im in data["images"]].index(data["annotations"][0]["image_id"])
    ]
    assert "MODEL.ROI_HEADS.NUM_CLASSES=4" in message and "hexagon" in message
    assert f"{image['file_name']} (category 4)" in message


def test_wrong_number_of_keypoints_is_an_error(dataset):
    root, json_file, data = dataset
    person = next(a for a in data["annotations"] if a["num_keypoints"] > 0)
    person["keypoints"] = person["keypoints"][:-3]
    _save(json_file, data)
    message = _training_error("bad_keypoint_count", root)
    assert f"annotation {person['id']} " in message
    assert "keypoints has 16 points; the dataset's categories define 17 keypoints" in message


def test_keypoint_count_other_than_the_model_predicts_is_an_error(dataset):
    root, _, _ = dataset
    message = _training_error(
        "bad_model_keypoints", root, "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "16"
    )
    assert "NUM_KEYPOINTS=16" in message and "(17 keypoints)" in message


def test_no_usable_training_image_is_an_error_not_an_empty_run(dataset):
    root, json_file, data = dataset
    data["annotations"] = []
    _save(json_file, data)
    message = _training_error("bad_all_empty", root)
    assert "No training image left" in message and "6 have no non-crowd annotation" in message


def test_no_image_with_enough_keypoints_is_an_error(dataset):
    root, json_file, data = dataset
    for annotation in data["annotations"]:
        annotation["keypoints"][2::3] = [0] * 17
        annotation["num_keypoints"] = 0
    _save(json_file, data)
    message = _training_error(
        "bad_no_keypoints", root, "MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE", "1"
    )
    assert (
        "fewer than MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE=1 visible keypoints" in message
    )


def test_annotation_file_without_images_is_an_error(dataset):
    root, json_file, data = dataset
    data["images"], data["annotations"] = [], []
    _save(json_file, data)
    assert "lists no images" in _training_error("bad_no_images", root)


def test_unregistered_dataset_is_named():
    from nonlocal_det.harness.data.loading import training_dataset_dicts
    from nonlocal_det.harness.preflight import BadDataError

    with pytest.raises(BadDataError, match="Dataset 'my_unregistered_set' is not registered"):
        training_dataset_dicts(_cfg("my_unregistered_set"))


@pytest.mark.slow
def test_train_net_reports_bad_data_without_a_traceback(dataset):
    root, _, data = dataset
    os.remove(root / "train" / data["images"][0]["file_name"])
    rc, log = run_train_net(
        root.parent.parent,
        *TINY,
        "SOLVER.MAX_ITER",
        "2",
        "OUTPUT_DIR",
        str(root.parent.parent / "o"),
    )
    assert rc != 0
    assert "error: Dataset 'nonlocal_synthetic_train' (" in log and "does not exist" in log
    assert data["images"][0]["file_name"] in log
    assert "Traceback" not in log


def _make_unusual(root, split, data):
    """
    Grayscale, RGBA and 20x24 px images, keypoints outside their box, an image without annotations.
    """
    images = data["images"]
    image_dir = root / split

    gray = cv2.imread(str(image_dir / images[0]["file_name"]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(image_dir / images[0]["file_name"]), gray)

    rgba = cv2.cvtColor(cv2.imread(str(image_dir / images[1]["file_name"])), cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = 128
    cv2.imwrite(str(image_dir / images[1]["file_name"]), rgba)

    # a tiny image: one 12x10 square
    tiny = np.full((20, 24, 3), 40, np.uint8)
    tiny[5:15, 6:18] = 220
    cv2.imwrite(str(image_dir / images[2]["file_name"]), tiny)
    images[2].update(height=20, width=24)
    square = {
        "id": 10**6,
        "image_id": images[2]["id"],
        "category_id": 3,
        "iscrowd": 0,
        "bbox": [6, 5, 12, 10],
        "area": 120.0,
        "segmentation": [[6, 5, 18, 5, 18, 15, 6, 15]],
        "keypoints": [0] * 51,
        "num_keypoints": 0,
    }
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != images[2]["id"]] + [
        square
    ]

    # the first person with visible keypoints: move half of them out of its box
    person = next(
        (
            a
            for a in data["annotations"]
            if a["num_keypoints"] > 0 and a["image_id"] != images[2]["id"]
        ),
        None,
    )
    if person is not None:
        x, y, w, h = person["bbox"]
        for k in range(0, 17, 2):
            person["keypoints"][3 * k : 3 * k + 3] = [x + w + 5, y + h / 2, 2]

    empty_id = images[3]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != empty_id]
    with open(root / "annotations" / f"{split}.json", "w") as f:
        json.dump(data, f)
    return person is not None


@pytest.mark.slow
def test_unusual_but_valid_images_train_and_evaluate(dataset):
    """
    Grayscale, RGBA, tiny images, keypoints outside boxes, an unannotated image: all used, none
    fatal.
    """
    root, json_file, data = dataset
    assert _make_unusual(root, "train", data), "no person with keypoints to move"
    with open(root / "annotations" / "val.json") as f:
        _make_unusual(root, "val", json.load(f))
    workdir = root.parent.parent
    rc, log = run_train_net(
        workdir, *TINY, "SOLVER.MAX_ITER", "6", "OUTPUT_DIR", str(workdir / "o")
    )
    assert rc == 0, log[-3000:]
    # only the unannotated training image is left out (Detectron2's FILTER_EMPTY_ANNOTATIONS)
    assert "Removed 1 images with no usable annotations. 5 images left." in log
    assert "Start inference on 4 batches" in log  # every val image evaluated, the empty one too
    with open(workdir / "o" / "final_metrics.json") as f:
        metrics = json.load(f)["nonlocal_synthetic_val"]
    assert set(metrics) == {"bbox", "segm", "keypoints"}
    losses = training_records(workdir / "o")
    assert losses and all(np.isfinite(r["total_loss"]) for r in losses)
