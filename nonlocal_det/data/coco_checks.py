"""
Checks of a COCO-format annotation file and its images, in one pass, before anything trains.

Each problem names the file, the record (image or annotation id), the field, and the fix; all
problems of a file are collected and reported together (``BadDataError``: the first few and a
count). What Detectron2 accepts and handles stays accepted:

- crowd annotations (``iscrowd: 1``, box and RLE mask): Detectron2 ignores them in training;
- images without annotations: skipped in training (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``);
- boxes of zero width or height: dropped as empty by Detectron2's mapper;
- boxes and polygons partly outside the image: clipped to the image by Detectron2's mapper.
  The rule: a box must overlap the image; one entirely outside it is an error (it would be
  dropped, and its object silently lost).

Checked: ``bbox`` (4 finite numbers, width and height >= 0, overlapping the image); polygon
``segmentation`` (each polygon an even number, >= 6, of finite coordinates) and RLE
(``counts`` and ``size`` equal to the image's); ``keypoints`` (3 K finite numbers, visibility 0, 1
or 2); ``category_id`` among ``categories``; ``image_id`` among ``images``; each image file
exists, is an image (its header, read without decoding the pixels) and has the JSON's
``width`` and ``height`` (after its EXIF orientation, as Detectron2 reads it).
"""

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

from PIL import Image

__all__ = ["Problem", "annotation_problems", "image_problems", "format_problems"]

SHOWN = 5  # problems listed in a message; the rest are counted
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 degrees: width and height swap


@dataclass(frozen=True)
class Problem:
    record: str  # "annotation 17 (image 3, 000003.png)" or "image 3 (000003.png)"
    field: str
    problem: str
    fix: str

    def __str__(self):
        return f"{self.record}: {self.field} {self.problem}; {self.fix}"


def _finite_numbers(values) -> bool:
    return isinstance(values, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def _box_problems(ann, image, where) -> Iterable[Problem]:
    bbox = ann.get("bbox")
    if bbox is None:
        yield Problem(
            where, "bbox", "is missing", "give every annotation a [x, y, width, height] box"
        )
        return
    if len(bbox) != 4 or not _finite_numbers(bbox):
        yield Problem(
            where, "bbox", f"{bbox!r} is not 4 finite numbers", "write [x, y, width, height]"
        )
        return
    x, y, w, h = bbox
    if w < 0 or h < 0:
        yield Problem(
            where,
            "bbox",
            f"{bbox} has a negative {'width' if w < 0 else 'height'}",
            "COCO boxes are [x, y, width, height] with width, height >= 0 (not [x0, y0, x1, y1])",
        )
        return
    width, height = image.get("width"), image.get("height")
    if ann.get("iscrowd", 0) or not width or not height:
        return
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        yield Problem(
            where,
            "bbox",
            f"{bbox} lies entirely outside the {width}x{height} image",
            "fix the box's coordinates (boxes partly outside are clipped to the image)",
        )


def _segmentation_problems(ann, image, where) -> Iterable[Problem]:
    segm = ann.get("segmentation")
    if segm is None or segm == []:
        return  # no mask: a box-only annotation
    if isinstance(segm, dict):  # RLE
        size = segm.get("size")
        if "counts" not in segm or not isinstance(size, (list, tuple)) or len(size) != 2:
            yield Problem(
                where, "segmentation", "is an RLE without counts and size", "re-encode the mask"
            )
        elif image.get("height") and list(size) != [image["height"], image["width"]]:
            yield Problem(
                where,
                "segmentation",
                f"is an RLE of size {list(size)}, the image is {image['height']}x{image['width']}",
                "encode the mask at the image's size",
            )
        return
    if not isinstance(segm, list):
        yield Problem(
            where,
            "segmentation",
            f"is a {type(segm).__name__}",
            "give a list of polygons or an RLE",
        )
        return
    for k, poly in enumerate(segm):
        if not _finite_numbers(poly):
            yield Problem(
                where,
                f"segmentation[{k}]",
                "is not a list of finite numbers",
                "write [x1, y1, x2, y2, ...]",
            )
        elif len(poly) % 2 or len(poly) < 6:
            yield Problem(
                where,
                f"segmentation[{k}]",
                f"has {len(poly)} coordinates",
                "a polygon needs an even number of coordinates, at least 3 points (6 numbers); "
                "Detectron2 would drop the annotation",
            )


def _keypoint_problems(ann, where, num_keypoints: Optional[int]) -> Iterable[Problem]:
    kps = ann.get("keypoints")
    if kps is None:
        return
    if not _finite_numbers(kps) or len(kps) % 3:
        yield Problem(
            where,
            "keypoints",
            "is not a list of finite (x, y, v) triplets",
            "write [x1, y1, v1, ...]",
        )
        return
    if num_keypoints is not None and len(kps) != 3 * num_keypoints:
        yield Problem(
            where,
            "keypoints",
            f"has {len(kps) // 3} points",
            f"the dataset's categories define {num_keypoints} keypoints",
        )
    bad = sorted({v for v in kps[2::3] if v not in (0, 1, 2)})
    if bad:
        yield Problem(
            where, "keypoints", f"has visibility {bad}", "visibility is 0 (not labelled), 1 or 2"
        )


def annotation_problems(coco: Dict) -> List[Problem]:
    """Problems of the annotations of a loaded COCO json (no file is opened)."""
    images = {im.get("id"): im for im in coco.get("images", [])}
    categories = {c.get("id"): c for c in coco.get("categories", [])}
    counts = {len(c["keypoints"]) for c in categories.values() if c.get("keypoints")}
    num_keypoints = counts.pop() if len(counts) == 1 else None
    problems = []
    for ann in coco.get("annotations", []):
        image = images.get(ann.get("image_id"))
        name = os.path.basename(str(image.get("file_name"))) if image else "?"
        where = f"annotation {ann.get('id')} (image {ann.get('image_id')}, {name})"
        if image is None:
            problems.append(
                Problem(
                    where,
                    "image_id",
                    "is not in the file's images",
                    "add the image or remove the annotation",
                )
            )
            continue
        if ann.get("category_id") not in categories:
            problems.append(
                Problem(
                    where,
                    "category_id",
                    f"{ann.get('category_id')!r} is not among the file's categories "
                    f"{sorted(categories)}",
                    "add the category or fix the id",
                )
            )
        problems.extend(_box_problems(ann, image, where))
        problems.extend(_segmentation_problems(ann, image, where))
        problems.extend(_keypoint_problems(ann, where, num_keypoints))
    return problems


def _image_size(path: str):
    """(width, height) as Detectron2 reads the image (EXIF orientation applied), from its header."""
    with Image.open(path) as im:
        width, height = im.size
        if im.format in ("JPEG", "MPO", "TIFF", "WEBP"):
            orientation = im.getexif().get(_EXIF_ORIENTATION)
            if orientation in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
    return width, height


def _one_image_problems(image: Dict, image_root: str) -> List[Problem]:
    path = os.path.join(image_root, image.get("file_name", ""))
    where = f"image {image.get('id')} ({image.get('file_name')})"
    if not os.path.isfile(path):
        return [
            Problem(
                where, "file_name", f"{path} does not exist", "restore the file or remove the image"
            )
        ]
    try:
        width, height = _image_size(path)
    except Exception as e:  # PIL raises several types for files that are not images
        return [
            Problem(
                where,
                "file_name",
                f"{path} is not an image ({type(e).__name__})",
                "replace the file",
            )
        ]
    if (image.get("width"), image.get("height")) != (width, height) and image.get("width"):
        return [
            Problem(
                where,
                "width/height",
                f"{image.get('width')}x{image.get('height')} in the JSON, but the file is "
                f"{width}x{height}",
                "fix the JSON's width and height (Detectron2 stops when it reads the image)",
            )
        ]
    return []


def image_problems(coco: Dict, image_root: str, threads: int = 8) -> List[Problem]:
    """Problems of the image files a COCO json lists: existence, header, size; in threads."""
    with ThreadPoolExecutor(threads) as pool:
        per_image = pool.map(lambda im: _one_image_problems(im, image_root), coco.get("images", []))
        return [p for problems in per_image for p in problems]


def format_problems(source: str, problems: List[Problem]) -> str:
    """One message: the source, the first ``SHOWN`` problems, and how many more."""
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    listed = "\n".join(f"  {p}" for p in problems[:SHOWN])
    return f"{source}: {len(problems)} problem(s):\n{listed}{more}"
