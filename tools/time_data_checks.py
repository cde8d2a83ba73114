#!/usr/bin/env python
"""
How long the checks before training take on a COCO-sized dataset: a generated annotation file of
118,287 images (COCO train2017's count) with 7 annotations each (828k; COCO has 860k), every
image a file of its own on disk (hard links to 64 distinct 640x480 JPEGs, so the header reads
are real file opens), checked by ``nonlocal_det.harness.data.coco_checks``.

    python tools/time_data_checks.py [--images 118287] [--workdir /tmp/checks]
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

from nonlocal_det.errors import exit_on_user_error
from nonlocal_det.harness.cli.args import positive_int, writable_folder
from nonlocal_det.harness.data.coco_checks import annotation_problems, image_problems


def build(workdir: str, num_images: int, per_image: int = 7) -> str:
    """The annotation file and image folder; returns the json path."""
    image_dir = os.path.join(workdir, "images")
    os.makedirs(image_dir, exist_ok=True)
    rng = np.random.RandomState(0)
    sources = [os.path.join(workdir, f"source{k}.jpg") for k in range(64)]
    for path in sources:
        Image.fromarray(rng.randint(0, 255, (480, 640, 3), np.uint8)).save(path, quality=80)
    images, annotations = [], []
    for i in range(1, num_images + 1):
        name = f"{i:012d}.jpg"
        target = os.path.join(image_dir, name)
        if not os.path.exists(target):
            os.link(sources[i % 64], target)
        images.append({"id": i, "file_name": name, "width": 640, "height": 480})
        for j in range(per_image):
            x, y = float(rng.uniform(0, 500)), float(rng.uniform(0, 380))
            poly = [x, y, x + 60, y, x + 60, y + 50, x, y + 50]
            ann = dict(id=len(annotations) + 1, image_id=i, category_id=1 + j % 80, iscrowd=0)
            annotations.append(dict(ann, bbox=[x, y, 60.0, 50.0], area=3000.0, segmentation=[poly]))
    categories = [{"id": c, "name": f"c{c}"} for c in range(1, 81)]
    json_path = os.path.join(workdir, "instances.json")
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=positive_int, default=118287)
    parser.add_argument("--workdir", type=writable_folder, help="default: a temporary folder")
    args = parser.parse_args(argv)
    if args.workdir:
        measure(args.workdir, args.images)
    else:
        with tempfile.TemporaryDirectory(prefix="nonlocal_det_checks_") as workdir:
            measure(workdir, args.images)


def measure(workdir: str, num_images: int) -> None:
    """Build the file and images in ``workdir``, then time the checks; prints one line."""
    json_path = build(workdir, num_images)
    start = time.perf_counter()
    with open(json_path) as f:
        coco = json.load(f)
    loaded = time.perf_counter()
    problems = annotation_problems(coco)
    annotations = time.perf_counter()
    problems += image_problems(coco, os.path.join(workdir, "images"))
    done = time.perf_counter()
    print(
        f"{len(coco['images'])} images, {len(coco['annotations'])} annotations, "
        f"{len(problems)} problems: json.load {loaded - start:.1f} s, annotation checks "
        f"{annotations - loaded:.1f} s, image header checks {done - annotations:.1f} s, "
        f"total {done - start:.1f} s ({os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    exit_on_user_error(main)
