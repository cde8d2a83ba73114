"""nonlocal_det.harness.data.coco_checks: each problem named, what Detectron2 handles accepted."""

import copy
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from nonlocal_det.harness.data.coco_checks import (
    Needs,
    annotation_problems,
    format_problems,
    image_problems,
    split_problems,
)

GOOD = {
    "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
    "categories": [
        {"id": 1, "name": "person", "keypoints": ["nose", "eye"]},
        {"id": 2, "name": "box"},
    ],
    "annotations": [
        {
            "id": 7,
            "image_id": 1,
            "category_id": 1,
            "bbox": [2, 3, 10, 12],
            "iscrowd": 0,
            "segmentation": [[2, 3, 12, 3, 12, 15]],
            "keypoints": [4, 5, 2, 6, 7, 1],
        },
        {
            "id": 8,
            "image_id": 1,
            "category_id": 2,
            "bbox": [30, 20, 10, 10],
            "iscrowd": 0,
            "segmentation": {"counts": "abc", "size": [30, 40]},  # made a valid RLE below
        },
    ],
}


_mask = np.zeros((30, 40), np.uint8, order="F")
_mask[21:29, 31:39] = 1
GOOD["annotations"][1]["segmentation"] = mask_util.encode(_mask)
GOOD["annotations"][1]["segmentation"]["counts"] = GOOD["annotations"][1]["segmentation"][
    "counts"
].decode()


def problems_after(edit):
    coco = copy.deepcopy(GOOD)
    edit(coco)
    return annotation_problems(coco)


def test_a_good_file_has_no_problem():
    assert annotation_problems(GOOD) == []


@pytest.mark.parametrize(
    "edit,field,words",
    [
        (lambda c: c["annotations"][0]["bbox"].__setitem__(2, -20), "bbox", "negative width"),
        (
            lambda c: c["annotations"][0]["bbox"].__setitem__(3, float("nan")),
            "bbox",
            "not 4 finite numbers",
        ),
        (
            lambda c: c["annotations"][0].__setitem__("bbox", [1, 2, 3]),
            "bbox",
            "not 4 finite numbers",
        ),
        (
            lambda c: c["annotations"][0].__setitem__("bbox", [50, 40, 5, 5]),
            "bbox",
            "past the 40x30 image",
        ),
        (  # XYXY written as XYWH
            lambda c: c["annotations"][1].__setitem__("bbox", [30, 20, 40, 30]),
            "bbox",
            "ends at (70, 50), past the 40x30 image",
        ),
        (  # a polygon shifted off its box
            lambda c: c["annotations"][0].__setitem__("segmentation", [[22, 3, 32, 3, 32, 15]]),
            "segmentation",
            "outside its bbox [2, 3, 10, 12]",
        ),
        (
            lambda c: c["annotations"][1]["segmentation"].__setitem__("counts", "abc"),
            "segmentation",
            "does not decode",
        ),
        (
            lambda c: c["annotations"][0].__setitem__("num_keypoints", 0),
            "num_keypoints",
            "is 0, but 2 keypoints have v > 0",
        ),
        (
            lambda c: c["annotations"][0].__setitem__("keypoints", [30, 25, 2, 35, 28, 1]),
            "keypoints",
            "outside their bbox",
        ),
        (
            lambda c: c["annotations"][0].__setitem__("segmentation", [[1, 2, 3, 4]]),
            "segmentation[0]",
            "has 4 coordinates",
        ),
        (
            lambda c: c["annotations"][0].__setitem__("segmentation", [[1, 2, 3, 4, 5, 6, 7]]),
            "segmentation[0]",
            "has 7",
        ),
        (
            lambda c: c["annotations"][0].__setitem__(
                "segmentation", [[1, 2, 3, float("inf"), 5, 6]]
            ),
            "segmentation[0]",
            "finite",
        ),
        (
            lambda c: c["annotations"][1].__setitem__(
                "segmentation", {"counts": "a", "size": [10, 10]}
            ),
            "segmentation",
            "of size [10, 10], the image is 30x40",
        ),
        (
            lambda c: c["annotations"][0].__setitem__("keypoints", [4, 5, 2]),
            "keypoints",
            "has 1 points",
        ),
        (
            lambda c: c["annotations"][0].__setitem__("keypoints", [4, 5, 2, 6, 7, 3]),
            "keypoints",
            "visibility [3]",
        ),
        (
            lambda c: c["annotations"][0].__setitem__("category_id", 9),
            "category_id",
            "9 is not among",
        ),
        (
            lambda c: c["annotations"][0].__setitem__("image_id", 5),
            "image_id",
            "not in the file's images",
        ),
    ],
)
def test_each_problem_names_the_record_and_field(edit, field, words):
    problems = problems_after(edit)
    problem = next(p for p in problems if p.field == field and words in p.problem)
    assert problem.record.startswith(("annotation 7 ", "annotation 8 "))
    assert problem.fix


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["annotations"][0].__setitem__(
            "bbox", [2, 3, 0, 12]
        ),  # empty: dropped by Detectron2
        lambda c: c["annotations"][0].__setitem__("bbox", [-1, -1, 14, 17]),  # rounding at the edge
        lambda c: c["annotations"][0].update(
            iscrowd=1, bbox=[50, 40, 5, 5]
        ),  # crowd: ignored in training
        lambda c: c["annotations"][0].__setitem__("segmentation", []),  # box only
        lambda c: c.__setitem__("annotations", []),  # images without annotations
    ],
)
def test_what_detectron2_handles_is_accepted(edit):
    assert problems_after(edit) == []


def test_image_files_exist_are_images_and_have_the_json_size(tmp_path):
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_text("not an image")
    Image.fromarray(np.zeros((30, 41, 3), np.uint8)).save(tmp_path / "c.png")
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
            {"id": 3, "file_name": "c.png", "width": 40, "height": 30},
            {"id": 4, "file_name": "d.png", "width": 40, "height": 30},
        ]
    }
    problems = {p.record: p for p in image_problems(coco, str(tmp_path))}
    assert set(problems) == {"image 2 (b.png)", "image 3 (c.png)", "image 4 (d.png)"}
    assert "is not an image" in problems["image 2 (b.png)"].problem
    assert "40x30 in the JSON, but the file is 41x30" in problems["image 3 (c.png)"].problem
    assert "does not exist" in problems["image 4 (d.png)"].problem


def test_image_files_read_in_processes_are_reported_in_file_order(tmp_path):
    """Past 1,000 images the files are read in processes: every problem, in the JSON's order."""
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a.png")
    images = [{"id": i, "file_name": "a.png", "width": 40, "height": 30} for i in range(1500)]
    for i in (3, 900, 1499):
        images[i] = dict(images[i], file_name=f"missing{i}.png")
    found = image_problems({"images": images}, str(tmp_path), processes=2)
    assert [p.record for p in found] == [f"image {i} (missing{i}.png)" for i in (3, 900, 1499)]


def test_exif_rotated_jpeg_has_the_size_detectron2_reads(tmp_path):
    """Detectron2 applies the EXIF orientation: a 40x30 JPEG rotated by 90 degrees is 30x40."""
    image = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "r.jpg", exif=exif)
    coco = {"images": [{"id": 1, "file_name": "r.jpg", "width": 30, "height": 40}]}
    assert image_problems(coco, str(tmp_path)) == []


def test_many_problems_are_listed_first_few_and_counted():
    coco = copy.deepcopy(GOOD)
    coco["annotations"] = [
        dict(GOOD["annotations"][0], id=i, bbox=[0, 0, -1, 1]) for i in range(12)
    ]
    message = format_problems("train.json", annotation_problems(coco))
    assert message.startswith("train.json: 12 problem(s):") and "and 7 more" in message
    assert json.dumps(message)  # plain text


def _split(coco, **category_names):
    coco = copy.deepcopy(coco)
    for c in coco["categories"]:
        c["name"] = category_names.get(str(c["id"]), c["name"])
    return coco


def test_splits_must_agree_on_what_a_category_id_means():
    train = GOOD
    swapped = _split(GOOD, **{"1": "box", "2": "person"})
    problems = split_problems([("train", train, False), ("val", swapped, True)])
    assert {p.field for p in problems} == {"category 1", "category 2"}
    assert "is 'box' here, 'person' in training" in problems[0].problem
    subset_of_train = copy.deepcopy(GOOD)
    subset_of_train["categories"] = subset_of_train["categories"][:1]
    (problem,) = split_problems([("train", train, False), ("val", subset_of_train, True)])
    assert problem.field == "category 2 (box)" and "is missing here" in problem.problem
    assert split_problems([("train", train, False), ("val", copy.deepcopy(GOOD), True)]) == []
    beyond = copy.deepcopy(GOOD)
    beyond["categories"].append({"id": 3, "name": "kite"})
    (problem,) = split_problems([("train", train, False), ("val", beyond, True)])
    assert problem.field == "category 3 (kite)" and "not a training category" in problem.problem
    twice = _split(GOOD, **{"2": "person"})
    (problem,) = split_problems([("train", twice, False)])
    assert "name 'person' is used by 2 ids" in problem.problem


@pytest.mark.parametrize(
    "edit,needs,field,words",
    [
        (  # an RLE mask trained with the default mask format
            lambda c: None,
            Needs(masks=True),
            "segmentation",
            "is an RLE, and INPUT.MASK_FORMAT is 'polygon'",
        ),
        (  # what pycocotools' keypoint evaluation reads, on every annotation
            lambda c: c["annotations"][1].update(iscrowd=1, area=100.0),
            Needs(keypoints=2, evaluated=True, mask_format="bitmask"),
            "keypoints",
            "are missing",
        ),
        (
            lambda c: (
                [a.update(area=1.0, num_keypoints=2) for a in c["annotations"]]
                and c["annotations"][0].pop("num_keypoints")
            ),
            Needs(keypoints=2, evaluated=True, mask_format="bitmask"),
            "num_keypoints",
            "is missing",
        ),
    ],
)
def test_rules_that_depend_on_the_run(edit, needs, field, words):
    coco = copy.deepcopy(GOOD)
    edit(coco)
    problems = annotation_problems(coco, needs)
    assert any(p.field == field and words in p.problem for p in problems), problems
    assert annotation_problems(coco, Needs()) == [] or field != "segmentation"


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_an_image_file_cut_short_is_named(tmp_path, suffix):
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (30, 40, 3), np.uint8)).save(
        tmp_path / f"a.{suffix}"
    )
    coco = {"images": [{"id": 1, "file_name": f"a.{suffix}", "width": 40, "height": 30}]}
    assert image_problems(coco, str(tmp_path)) == []
    data = (tmp_path / f"a.{suffix}").read_bytes()
    (tmp_path / f"a.{suffix}").write_bytes(data[: len(data) * 2 // 3])
    (problem,) = image_problems(coco, str(tmp_path))
    assert "is cut short" in problem.problem


def test_an_image_path_that_is_a_folder_is_named(tmp_path):
    (tmp_path / "a.png").mkdir()
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]}
    (problem,) = image_problems(coco, str(tmp_path))
    assert "is a folder" in problem.problem
