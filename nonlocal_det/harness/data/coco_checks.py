"""
Checks of a COCO-format annotation file and its images, by principle: every field that
Detectron2's COCO loader (``load_coco_json``), its dataset mapper and pycocotools' evaluation read
is checked for presence, type and range before anything trains, with the rules they apply when
they read it. ``DATA_RULES`` states them (docs/reliability.md lists the same text).

Each problem names the file, the record (image, annotation or category id), the field, and the
fix; all problems of a file are collected and reported together (``BadDataError``: the first few
and a count). What Detectron2 accepts and handles stays accepted: crowd annotations (ignored in
training), images without annotations (skipped in training), boxes of zero width or height
(dropped as empty by the mapper), boxes and polygons partly outside the image (clipped).
"""

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, Iterable, List

from PIL import Image

__all__ = [
    "DATA_RULES",
    "Needs",
    "Problem",
    "annotation_problems",
    "file_problems",
    "image_problems",
    "format_problems",
]

SHOWN = 5  # problems listed in a message; the rest are counted
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 degrees: width and height swap
# PIL modes that Detectron2's read_image converts to 8-bit RGB/BGR faithfully. 16-bit and 32-bit
# single-channel modes ("I;16", "I", "F") are clipped to 255 by that conversion: an all-white image.
DECODABLE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")

# (what, rule): the rules of this module, in words. docs/reliability.md lists the same lines.
DATA_RULES = (
    ("file", "a JSON object with 'images' (a list), 'categories' (a non-empty list) and, if "
     "present, 'annotations' (a list)"),
    ("categories", "'id' an int, unique; 'name' a string; 'keypoints', if present, a list of "
     "names"),
    ("images", "'id' an int, unique; 'file_name' a non-empty string; 'height' and 'width' ints "
     ">= 1 (Detectron2's loader reads both)"),
    ("annotations", "'id' an int, unique (Detectron2's loader asserts it); 'image_id' among the "
     "images; 'category_id' among the categories"),
    ("annotations", "'bbox' 4 finite numbers [x, y, width, height], width and height >= 0, the "
     "box overlapping its image unless 'iscrowd' is 1"),
    ("annotations", "'iscrowd', if present, 0 or 1; in an evaluated dataset 'iscrowd' and 'area' "
     "(a finite number >= 0) present, as pycocotools reads them"),
    ("annotations", "'segmentation', if present, an RLE {counts, size} of its image's size or a "
     "list of polygons of an even number >= 6 of finite coordinates"),
    ("annotations", "with MODEL.MASK_ON, every annotation the model trains or is evaluated on "
     "(non-crowd in training, all in evaluation) has a non-empty 'segmentation'"),
    ("annotations", "'keypoints', if present, 3K finite numbers (x, y, v), v in {0, 1, 2}, K the "
     "count its category defines; with MODEL.KEYPOINT_ON every non-crowd annotation has "
     "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS of them"),
    ("image files", "exist, read as an image, have the JSON's width and height after their EXIF "
     f"orientation, and a mode Detectron2 decodes to 8 bits faithfully {list(DECODABLE_MODES)} "
     "(DATALOADER.CHECK_IMAGES False skips these reads)"),
)  # fmt: skip


@dataclass(frozen=True)
class Needs:
    """What the configured model and run read from the file beyond what every model reads."""

    masks: bool = False  # MODEL.MASK_ON
    keypoints: int = 0  # MODEL.KEYPOINT_ON: the keypoints per annotation; 0: not read
    evaluated: bool = False  # a test dataset, read by pycocotools' COCOeval


@dataclass(frozen=True)
class Problem:
    record: str  # "annotation 17 (image 3, 000003.png)" or "image 3 (000003.png)"
    field: str
    problem: str
    fix: str

    def __str__(self):
        return f"{self.record}: {self.field} {self.problem}; {self.fix}"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite_numbers(values) -> bool:
    return isinstance(values, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def file_problems(coco) -> List[Problem]:
    """The top level's shape; problems here stop the other checks (nothing else can be read)."""
    if not isinstance(coco, dict):
        return [
            Problem(
                "the file",
                "top level",
                f"is a JSON {type(coco).__name__}",
                "a COCO file is an object {'images': [...], 'annotations': [...], "
                "'categories': [...]}",
            )
        ]
    problems = []
    for key, required in (("images", True), ("categories", True), ("annotations", False)):
        value = coco.get(key)
        if value is None and not required:
            continue
        if not isinstance(value, list) or (key == "categories" and not value):
            what = "is missing" if value is None else f"is {value!r:.40}"
            problems.append(
                Problem(
                    "the file",
                    f"'{key}'",
                    what,
                    f"give a {'non-empty ' if key == 'categories' else ''}list of {key}",
                )
            )
    return problems


def _duplicates(records, section: str, describe) -> Iterable[Problem]:
    counts = Counter(r.get("id") for r in records if _is_int(r.get("id")))
    for record in records:
        if counts.get(record.get("id"), 0) > 1:
            yield Problem(
                describe(record),
                "id",
                f"{record.get('id')} is used by {counts[record.get('id')]} {section}",
                f"give each of the {section} its own id (a repeated id mixes their records up)",
            )


def _category_problems(categories) -> Iterable[Problem]:
    for index, c in enumerate(categories):
        where = f"category {c.get('id') if isinstance(c, dict) else index}"
        if not isinstance(c, dict):
            yield Problem(where, "record", f"is {c!r:.40}", "write {'id': ..., 'name': ...}")
            continue
        if not _is_int(c.get("id")):
            yield Problem(where, "id", f"{c.get('id')!r} is not an int", "give an int id")
        if not isinstance(c.get("name"), str):
            yield Problem(where, "name", "is missing or not a string", "name the category")
        kps = c.get("keypoints")
        if kps is not None and not (isinstance(kps, list) and all(isinstance(k, str) for k in kps)):
            yield Problem(where, "keypoints", "is not a list of names", "list the keypoint names")
    yield from _duplicates([c for c in categories if isinstance(c, dict)], "categories", _cat_name)


def _cat_name(c) -> str:
    return f"category {c.get('id')} ({c.get('name')})"


def _image_name(image) -> str:
    return f"image {image.get('id')} ({image.get('file_name')})"


def _image_record_problems(images) -> Iterable[Problem]:
    for index, im in enumerate(images):
        if not isinstance(im, dict):
            yield Problem(f"images[{index}]", "record", f"is {im!r:.40}", "write an image object")
            continue
        where = _image_name(im)
        if not _is_int(im.get("id")):
            yield Problem(where, "id", f"{im.get('id')!r} is not an int", "give an int id")
        if not isinstance(im.get("file_name"), str) or not im.get("file_name"):
            yield Problem(where, "file_name", "is missing or empty", "name the image file")
        for key in ("height", "width"):
            if not _is_int(im.get(key)) or im[key] < 1:
                yield Problem(
                    where,
                    key,
                    f"is {im.get(key)!r}, not an int >= 1",
                    "give the image's size in pixels (Detectron2's loader reads it)",
                )
    yield from _duplicates([im for im in images if isinstance(im, dict)], "images", _image_name)


def _box_problems(ann, image, where) -> Iterable[Problem]:
    bbox = ann.get("bbox")
    if bbox is None:
        yield Problem(
            where, "bbox", "is missing", "give every annotation a [x, y, width, height] box"
        )
        return
    if not _finite_numbers(bbox) or len(bbox) != 4:
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
    if ann.get("iscrowd", 0) or not _is_int(width) or not _is_int(height):
        return
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        yield Problem(
            where,
            "bbox",
            f"{bbox} lies entirely outside the {width}x{height} image",
            "fix the box's coordinates (boxes partly outside are clipped to the image)",
        )


def _segmentation_problems(ann, image, where, needs: Needs) -> Iterable[Problem]:
    segm = ann.get("segmentation")
    if segm is None or segm == []:
        trained = not ann.get("iscrowd", 0) or needs.evaluated
        if needs.masks and trained:
            yield Problem(
                where,
                "segmentation",
                "is missing or empty, and the model has a mask head (MODEL.MASK_ON)",
                "give the annotation a mask (polygons or RLE), remove it, or set MODEL.MASK_ON "
                "False (Detectron2's mapper fails on it when the image is first sampled)",
            )
        return
    if isinstance(segm, dict):  # RLE
        size = segm.get("size")
        if "counts" not in segm or not isinstance(size, (list, tuple)) or len(size) != 2:
            yield Problem(
                where, "segmentation", "is an RLE without counts and size", "re-encode the mask"
            )
        elif list(size) != [image.get("height"), image.get("width")]:
            yield Problem(
                where,
                "segmentation",
                f"is an RLE of size {list(size)}, the image is "
                f"{image.get('height')}x{image.get('width')}",
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


def _keypoint_problems(ann, where, defined, needs: Needs) -> Iterable[Problem]:
    kps = ann.get("keypoints")
    if kps is None:
        if needs.keypoints and not ann.get("iscrowd", 0):
            yield Problem(
                where,
                "keypoints",
                "are missing, and the model has a keypoint head (MODEL.KEYPOINT_ON)",
                "give every non-crowd annotation its keypoints (v = 0 where not labelled), or set "
                "MODEL.KEYPOINT_ON False",
            )
        return
    if not _finite_numbers(kps) or len(kps) % 3:
        yield Problem(
            where,
            "keypoints",
            "is not a list of finite (x, y, v) triplets",
            "write [x1, y1, v1, ...]",
        )
        return
    expected = defined or needs.keypoints
    if expected and len(kps) != 3 * expected:
        source = (
            "the dataset's categories define"
            if defined
            else "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS is"
        )
        yield Problem(
            where, "keypoints", f"has {len(kps) // 3} points", f"{source} {expected} keypoints"
        )
    bad = sorted({v for v in kps[2::3] if v not in (0, 1, 2)})
    if bad:
        yield Problem(
            where, "keypoints", f"has visibility {bad}", "visibility is 0 (not labelled), 1 or 2"
        )


def _evaluation_problems(ann, where) -> Iterable[Problem]:
    if ann.get("iscrowd") is None:
        yield Problem(
            where, "iscrowd", "is missing", "pycocotools' evaluation reads it: give 0 or 1"
        )
    area = ann.get("area")
    if not _finite_numbers([area]) or area < 0:
        yield Problem(
            where,
            "area",
            f"is {area!r}, not a finite number >= 0",
            "pycocotools' evaluation reads it: give the object's area in pixels",
        )


def _annotation_problems(ann, images, categories, defined_keypoints, needs) -> List[Problem]:
    image = images.get(ann.get("image_id"))
    name = os.path.basename(str(image.get("file_name"))) if image else "?"
    where = f"annotation {ann.get('id')} (image {ann.get('image_id')}, {name})"
    if not _is_int(ann.get("id")):
        return [Problem(where, "id", f"{ann.get('id')!r} is not an int", "give an int id")]
    if image is None:
        return [
            Problem(where, "image_id", "is not in the file's images", "add the image or remove it")
        ]
    problems = []
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
    if ann.get("iscrowd", 0) not in (0, 1):
        problems.append(Problem(where, "iscrowd", f"is {ann['iscrowd']!r}", "give 0 or 1"))
    problems.extend(_box_problems(ann, image, where))
    problems.extend(_segmentation_problems(ann, image, where, needs))
    problems.extend(_keypoint_problems(ann, where, defined_keypoints, needs))
    if needs.evaluated:
        problems.extend(_evaluation_problems(ann, where))
    return problems


def annotation_problems(coco, needs: Needs = Needs()) -> List[Problem]:
    """Problems of a loaded COCO json against ``DATA_RULES`` (no file is opened)."""
    problems = file_problems(coco)
    if problems:
        return problems
    problems += _category_problems(coco["categories"])
    problems += _image_record_problems(coco["images"])
    annotations = coco.get("annotations") or []
    if not all(isinstance(a, dict) for a in annotations):
        return problems + [
            Problem("the file", "'annotations'", "holds a value that is not an object", "fix it")
        ]
    problems += _duplicates(annotations, "annotations", lambda a: f"annotation {a.get('id')}")
    images = {im.get("id"): im for im in coco["images"] if isinstance(im, dict)}
    categories = {c.get("id"): c for c in coco["categories"] if isinstance(c, dict)}
    counts = {len(c["keypoints"]) for c in categories.values() if c.get("keypoints")}
    defined_keypoints = counts.pop() if len(counts) == 1 else 0
    for ann in annotations:
        problems += _annotation_problems(ann, images, categories, defined_keypoints, needs)
    return problems


def _image_header(path: str):
    """
    (width, height, mode) as Detectron2 reads the image (EXIF orientation applied), from its
    header alone.
    """
    with Image.open(path) as im:
        width, height = im.size
        if im.format in ("JPEG", "MPO", "TIFF", "WEBP"):
            orientation = im.getexif().get(_EXIF_ORIENTATION)
            if orientation in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
        return width, height, im.mode


def _one_image_problems(image: Dict, image_root: str) -> List[Problem]:
    if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
        return []  # a bad record: reported by the annotation checks
    path = os.path.join(image_root, image["file_name"])
    where = _image_name(image)
    if not os.path.isfile(path):
        return [
            Problem(
                where, "file_name", f"{path} does not exist", "restore the file or remove the image"
            )
        ]
    try:
        width, height, mode = _image_header(path)
    except Exception as e:  # PIL raises several types for files that are not images
        return [
            Problem(
                where, "file_name", f"{path} is not an image ({type(e).__name__})", "replace it"
            )
        ]
    problems = []
    if mode not in DECODABLE_MODES:
        problems.append(
            Problem(
                where,
                "file_name",
                f"{path} has pixel mode {mode!r} (e.g. 16 bits per pixel), which Detectron2's "
                "reader clips to 8 bits: the model would see a blank image",
                "convert it to 8-bit RGB or grayscale",
            )
        )
    if (image.get("width"), image.get("height")) != (width, height):
        problems.append(
            Problem(
                where,
                "width/height",
                f"{image.get('width')}x{image.get('height')} in the JSON, but the file is "
                f"{width}x{height}",
                "fix the JSON's width and height (Detectron2 stops when it reads the image)",
            )
        )
    return problems


def image_problems(coco: Dict, image_root: str, threads: int = 8) -> List[Problem]:
    """Problems of the image files a COCO json lists: existence, header, size, mode; in threads."""
    with ThreadPoolExecutor(threads) as pool:
        per_image = pool.map(lambda im: _one_image_problems(im, image_root), coco.get("images", []))
        return [p for problems in per_image for p in problems]


def format_problems(source: str, problems: List[Problem]) -> str:
    """One message: the source, the first ``SHOWN`` problems, and how many more."""
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    listed = "\n".join(f"  {p}" for p in problems[:SHOWN])
    return f"{source}: {len(problems)} problem(s):\n{listed}{more}"
