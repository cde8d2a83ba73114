"""
The data rules: one table (``DATA_RULES``) of what every COCO-format file a run reads must meet,
applied before anything trains to the training split and to every dataset the evaluator reads.

A rule is checked on one subject: the file, a category, an image record, an annotation, an image
file on disk, or the run's splits together. Rules are by principle: every field Detectron2's
loader (``load_coco_json``), its dataset mapper and pycocotools' evaluation read is present, of its
type and range; fields that describe one object agree with each other (box, mask, keypoints,
image size); splits agree on what a category id means. Each problem names the file, the record,
the field and the fix; all of a file's problems are reported together (``BadDataError``: the
first few and a count). docs/reliability.md lists the table (written by
``python -m nonlocal_det.harness.docs``).
What Detectron2 handles stays accepted: crowd annotations (ignored in training), images without
annotations (skipped in training), boxes of zero width or height (dropped by the mapper).
"""

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Tuple

from PIL import Image

from ..io import is_int

__all__ = [
    "DATA_RULES",
    "Needs",
    "Problem",
    "annotation_problems",
    "image_problems",
    "split_problems",
    "format_problems",
]

SHOWN = 5  # problems listed in a message; the rest are counted
EDGE_PX = 2  # a box may pass its image's edge by this much (rounding)
MASK_SLACK = 0.1  # a mask or keypoint may pass its box by this share of the box's side (+ EDGE_PX)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 degrees: width and height swap
# PIL modes that Detectron2's read_image converts to 8-bit RGB/BGR faithfully. 16-bit and 32-bit
# single-channel modes ("I;16", "I", "F") are clipped to 255 by that conversion: an all-white image.
DECODABLE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
# The bytes a whole file of these formats ends with: a file cut short lacks them.
FILE_ENDS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


@dataclass(frozen=True)
class Needs:
    """What the configured model and run read from a file beyond what every model reads."""

    masks: bool = False  # MODEL.MASK_ON
    mask_format: str = "polygon"  # INPUT.MASK_FORMAT
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


@dataclass
class _File:
    """One loaded file, indexed: what the annotation rules look records up in."""

    coco: Dict
    needs: Needs
    images: Dict = field(default_factory=dict)
    categories: Dict = field(default_factory=dict)
    defined_keypoints: int = 0


@dataclass(frozen=True)
class Rule:
    """``check(record, file)`` yields (field, problem, fix) for each way ``record`` breaks it."""

    subject: str
    text: str
    check: Callable


def _finite(values, count=None) -> bool:
    return (
        isinstance(values, (list, tuple))
        and (count is None or len(values) == count)
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )
    )


def _slack(box) -> Tuple[float, float, float, float]:
    """An XYWH box enlarged by MASK_SLACK of its sides and EDGE_PX, as XYXY."""
    x, y, w, h = box
    dx, dy = MASK_SLACK * w + EDGE_PX, MASK_SLACK * h + EDGE_PX
    return x - dx, y - dy, x + w + dx, y + h + dy


def _valid_box(ann) -> bool:
    """A box the mask and keypoint rules measure against: 4 finite numbers, width, height > 0."""
    return _finite(ann.get("bbox"), 4) and min(ann["bbox"][2:]) > 0


def _inside(points, box) -> List[bool]:
    x0, y0, x1, y1 = _slack(box)
    return [x0 <= px <= x1 and y0 <= py <= y1 for px, py in points]


# ------------------------------------------------------------------ the checks, one per rule


def _file_shape(coco, _):
    if not isinstance(coco, dict):
        yield "top level", f"is a JSON {type(coco).__name__}", "write {'images': [...], ...}"
        return
    for key, required in (("images", True), ("categories", True), ("annotations", False)):
        value = coco.get(key)
        if (value is not None or required) and (
            not isinstance(value, list) or (key == "categories" and not value)
        ):
            what = "is missing" if value is None else f"is {value!r:.40}"
            yield f"'{key}'", what, f"give a list of {key}"


def _category_fields(c, _):
    if not is_int(c.get("id")):
        yield "id", f"{c.get('id')!r} is not an int", "give an int id"
    if not isinstance(c.get("name"), str):
        yield "name", "is missing or not a string", "name the category"
    kps = c.get("keypoints")
    if kps is not None and not (isinstance(kps, list) and all(isinstance(k, str) for k in kps)):
        yield "keypoints", "is not a list of names", "list the keypoint names"


def _image_fields(im, _):
    if not is_int(im.get("id")):
        yield "id", f"{im.get('id')!r} is not an int", "give an int id"
    if not isinstance(im.get("file_name"), str) or not im.get("file_name"):
        yield "file_name", "is missing or empty", "name the image file"
    for key in ("height", "width"):
        if not is_int(im.get(key)) or im[key] < 1:
            yield key, f"is {im.get(key)!r}, not an int >= 1", "give the image's size in pixels"


def _references(ann, f: _File):
    if ann.get("category_id") not in f.categories:
        yield (
            "category_id",
            f"{ann.get('category_id')!r} is not among the file's categories {sorted(f.categories)}",
            "add the category or fix the id",
        )
    if ann.get("iscrowd", 0) not in (0, 1):
        yield "iscrowd", f"is {ann['iscrowd']!r}", "give 0 or 1"


def _box(ann, f: _File):
    bbox, image = ann.get("bbox"), f.images[ann["image_id"]]
    if not _finite(bbox, 4):
        yield "bbox", f"{bbox!r} is not 4 finite numbers", "write [x, y, width, height]"
        return
    x, y, w, h = bbox
    width, height = image.get("width"), image.get("height")
    if w < 0 or h < 0:
        yield (
            "bbox",
            f"{bbox} has a negative {'width' if w < 0 else 'height'}",
            ("COCO boxes are [x, y, width, height] with width, height >= 0 (not [x0, y0, x1, y1])"),
        )
    elif not ann.get("iscrowd", 0) and is_int(width) and is_int(height):
        if x < -EDGE_PX or y < -EDGE_PX or x + w > width + EDGE_PX or y + h > height + EDGE_PX:
            yield (
                "bbox",
                f"{bbox} ends at ({x + w:g}, {y + h:g}), past the {width}x{height} image",
                "COCO boxes are [x, y, width, height] (not [x0, y0, x1, y1]); fix the box",
            )


def _mask_box(segm, height, width):
    """The XYXY box of a polygon list or RLE, or a (field, problem, fix) triple."""
    if isinstance(segm, dict):
        from pycocotools import mask as mask_util

        if "counts" not in segm or list(segm.get("size", [])) != [height, width]:
            what = f"is an RLE of size {segm.get('size')}, the image is {height}x{width}"
            return "segmentation", what, "encode the mask at the image's size [height, width]"
        counts = segm["counts"]
        if isinstance(counts, list):
            if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                return "segmentation", "is an RLE whose counts do not sum to its size", "re-encode"
            rle = mask_util.frPyObjects(segm, height, width)
        else:
            rle = segm
        try:
            mask_util.decode(rle)
        except (ValueError, TypeError) as e:
            return "segmentation", f"is an RLE that does not decode ({e})", "re-encode the mask"
        x, y, w, h = mask_util.toBbox(rle).tolist()
        return x, y, x + w, y + h
    for k, poly in enumerate(segm):
        if not _finite(poly) or len(poly) % 2 or len(poly) < 6:
            what = f"has {len(poly)} coordinates" if _finite(poly) else "is not finite numbers"
            fix = "a polygon is [x1, y1, x2, y2, ...], at least 3 points; Detectron2 would drop it"
            return f"segmentation[{k}]", what, fix
    xs = [v for poly in segm for v in poly[0::2]]
    ys = [v for poly in segm for v in poly[1::2]]
    return min(xs), min(ys), max(xs), max(ys)


def _mask(ann, f: _File):
    segm, image = ann.get("segmentation"), f.images[ann["image_id"]]
    crowd = ann.get("iscrowd", 0)
    if segm is None or segm == []:
        if f.needs.masks and (not crowd or f.needs.evaluated):
            yield (
                "segmentation",
                "is missing or empty, and the model has a mask head",
                (
                    "give the annotation a mask (polygons or RLE), remove it, or set MODEL.MASK_ON "
                    "False"
                ),
            )
        return
    if not isinstance(segm, (dict, list)):
        yield "segmentation", f"is a {type(segm).__name__}", "give a list of polygons or an RLE"
        return
    if isinstance(segm, dict) and f.needs.masks and not crowd and f.needs.mask_format == "polygon":
        yield (
            "segmentation",
            "is an RLE, and INPUT.MASK_FORMAT is 'polygon'",
            ("set INPUT.MASK_FORMAT 'bitmask' (Detectron2 reads RLE masks only as bitmasks)"),
        )
    box = _mask_box(segm, image.get("height"), image.get("width"))
    if len(box) == 3:
        yield box
    elif _valid_box(ann) and not crowd:
        corners = [(box[0], box[1]), (box[2], box[3])]
        if not all(_inside(corners, ann["bbox"])):
            yield (
                "segmentation",
                f"spans {[round(v, 1) for v in box]} (XYXY), outside its bbox {ann['bbox']}",
                "the mask and the box describe other objects: fix whichever is shifted",
            )


def _keypoints(ann, f: _File):
    kps, crowd = ann.get("keypoints"), ann.get("iscrowd", 0)
    evaluated_keypoints = f.needs.keypoints and f.needs.evaluated
    if kps is None:
        if (f.needs.keypoints and not crowd) or evaluated_keypoints:
            yield (
                "keypoints",
                "are missing, and the model has a keypoint head",
                (
                    "give every annotation its keypoints (v = 0 where not labelled), or set "
                    "MODEL.KEYPOINT_ON False"
                ),
            )
        return
    if not _finite(kps) or len(kps) % 3:
        yield "keypoints", "is not a list of finite (x, y, v) triplets", "write [x1, y1, v1, ...]"
        return
    expected = f.defined_keypoints or f.needs.keypoints
    if expected and len(kps) != 3 * expected:
        source = (
            "the dataset's categories define"
            if f.defined_keypoints
            else ("MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS is")
        )
        yield "keypoints", f"has {len(kps) // 3} points", f"{source} {expected} keypoints"
    bad = sorted({v for v in kps[2::3] if v not in (0, 1, 2)})
    if bad:
        yield "keypoints", f"has visibility {bad}", "v is 0 (not labelled), 1 or 2"
        return
    labelled = [(x, y) for x, y, v in zip(kps[0::3], kps[1::3], kps[2::3]) if v > 0]
    count = ann.get("num_keypoints")
    if count is None and evaluated_keypoints:
        yield "num_keypoints", "is missing", "pycocotools' keypoint evaluation reads it"
    elif count is not None and count != len(labelled):
        yield (
            "num_keypoints",
            f"is {count}, but {len(labelled)} keypoints have v > 0",
            ("give the count of labelled keypoints (pycocotools ignores a person with 0)"),
        )
    if labelled and _valid_box(ann) and not crowd:
        outside = len(labelled) - sum(_inside(labelled, ann["bbox"]))
        if outside > len(labelled) / 2:
            yield (
                "keypoints",
                f"lie outside their bbox {ann['bbox']} ({outside} of {len(labelled)})",
                ("keypoints are (x, y, v) in image pixels: fix the keypoints or the box"),
            )


def _evaluated_fields(ann, f: _File):
    if not f.needs.evaluated:
        return
    if ann.get("iscrowd") is None:
        yield "iscrowd", "is missing", "pycocotools' evaluation reads it: give 0 or 1"
    if not _finite([ann.get("area")]) or ann["area"] < 0:
        yield "area", f"is {ann.get('area')!r}, not a finite number >= 0", "give the area in pixels"


def _image_file(image, image_root):
    path = os.path.join(image_root, image["file_name"])
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        yield "file_name", f"{path} {what}", "restore the image file or remove the record"
        return
    try:
        with Image.open(path) as im:
            width, height, mode, kind = *im.size, im.mode, im.format
            orientation = im.getexif().get(_EXIF_ORIENTATION) if kind in ("JPEG", "MPO") else None
    except Exception as e:  # PIL raises several types for files that are not images
        yield "file_name", f"{path} is not an image ({type(e).__name__})", "replace it"
        return
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    end = FILE_ENDS.get("JPEG" if kind == "MPO" else kind)
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 64))
        tail = f.read().rstrip(b"\x00")
    if end and not tail.endswith(end):
        yield "file_name", f"{path} is cut short (no {kind} end marker)", "copy the file again"
    if mode not in DECODABLE_MODES:
        yield (
            "file_name",
            f"{path} has pixel mode {mode!r}, which Detectron2's reader clips to 8 bits: the "
            "model would see a blank image",
            "convert it to 8-bit RGB or grayscale",
        )
    if (image.get("width"), image.get("height")) != (width, height):
        yield (
            "width/height",
            f"{image.get('width')}x{image.get('height')} in the JSON, but the file is "
            f"{width}x{height}",
            "fix the JSON's width and height",
        )


def _categories_of(coco) -> Dict:
    return {c.get("id"): c.get("name") for c in coco.get("categories", []) if isinstance(c, dict)}


def _split_agreement(splits, _):
    """``splits``: [(name, coco, evaluated)], the training splits first."""
    trained = {}
    for name, coco, evaluated in splits:
        cats = _categories_of(coco)
        names = Counter(cats.values())
        for n, count in names.items():
            if count > 1:
                yield (
                    name,
                    "categories",
                    f"name {n!r} is used by {count} ids",
                    ("give each category its own name (evaluation reports AP by name)"),
                )
        if not evaluated:
            trained.update(cats)
            continue
        for cid, n in cats.items():
            if cid not in trained and trained:
                yield (
                    name,
                    f"category {cid} ({n})",
                    "is not a training category",
                    ("evaluate on the categories the model was trained on"),
                )
            elif trained and trained[cid] != n:
                yield (
                    name,
                    f"category {cid}",
                    f"is {n!r} here, {trained[cid]!r} in training",
                    (
                        "use the training split's id for every name (else AP is scored against "
                        "other "
                        "classes)"
                    ),
                )


DATA_RULES = (
    Rule("file", "a JSON object with 'images' (a list), 'categories' (a non-empty list) and, if "
         "present, 'annotations' (a list)", _file_shape),
    Rule("category", "'id' an int, unique; 'name' a string; 'keypoints', if present, a list of "
         "names", _category_fields),
    Rule("image", "'id' an int, unique; 'file_name' a non-empty string; 'height' and 'width' ints "
         ">= 1", _image_fields),
    Rule("annotation", "'id' an int, unique; 'image_id' among the images; 'category_id' among the "
         "categories; 'iscrowd', if present, 0 or 1", _references),
    Rule("annotation", f"'bbox' 4 finite numbers [x, y, width, height], width and height >= 0, "
         f"within its image (+-{EDGE_PX} px) unless 'iscrowd' is 1", _box),
    Rule("annotation", "'segmentation' polygons (each an even number >= 6 of finite coordinates) "
         "or an RLE of its image's size that decodes; within its bbox (+-"
         f"{MASK_SLACK:.0%} of the box's side + {EDGE_PX} px); an RLE mask of a non-crowd "
         "annotation needs INPUT.MASK_FORMAT 'bitmask'; with MODEL.MASK_ON every annotation the "
         "model trains or is evaluated on has one", _mask),
    Rule("annotation", "'keypoints' 3K finite numbers (x, y, v), v in {0, 1, 2}, K the count the "
         "categories define; most labelled ones within the bbox (+-"
         f"{MASK_SLACK:.0%}); 'num_keypoints' the count with v > 0; with MODEL.KEYPOINT_ON every "
         "non-crowd annotation has them, and in an evaluated dataset every annotation",
         _keypoints),
    Rule("annotation", "in an evaluated dataset, 'iscrowd' and 'area' (a number >= 0), which "
         "pycocotools reads", _evaluated_fields),
    Rule("image file", "a file that reads as an image, whole (JPEG and PNG end with their end "
         "marker), of the JSON's width and height after its EXIF orientation, in a mode "
         f"Detectron2 decodes to 8 bits faithfully {list(DECODABLE_MODES)} "
         "(DATALOADER.CHECK_IMAGES False skips these reads)", _image_file),
    Rule("splits", "every dataset the run reads gives each category id the same name, names are "
         "unique, and the evaluated datasets' categories are training categories",
         _split_agreement),
)  # fmt: skip
_BY_SUBJECT = {
    s: [r for r in DATA_RULES if r.subject == s] for s in {r.subject for r in DATA_RULES}
}


def _apply(subject, record, where, context) -> List[Problem]:
    return [
        Problem(where, fld, problem, fix)
        for rule in _BY_SUBJECT[subject]
        for fld, problem, fix in rule.check(record, context)
    ]


def _duplicates(records, section: str, describe) -> Iterable[Problem]:
    counts = Counter(r.get("id") for r in records if is_int(r.get("id")))
    for record in records:
        if counts.get(record.get("id"), 0) > 1:
            yield Problem(
                describe(record),
                "id",
                f"{record.get('id')} is used by {counts[record.get('id')]} {section}",
                f"give each of the {section} its own id",
            )


def _image_name(image) -> str:
    return f"image {image.get('id')} ({image.get('file_name')})"


def annotation_problems(coco, needs: Needs = Needs()) -> List[Problem]:
    """Problems of a loaded COCO json against the rules of ``DATA_RULES`` (no file opened)."""
    problems = _apply("file", coco, "the file", None)
    if problems:
        return problems
    f = _File(coco, needs)
    for index, c in enumerate(coco["categories"]):
        where = f"category {c.get('id') if isinstance(c, dict) else index}"
        if not isinstance(c, dict):
            problems.append(Problem(where, "record", f"is {c!r:.40}", "write an object"))
            continue
        problems += _apply("category", c, where, f)
        f.categories[c.get("id")] = c
    for index, im in enumerate(coco["images"]):
        if not isinstance(im, dict):
            problems.append(Problem(f"images[{index}]", "record", f"is {im!r:.40}", "fix it"))
            continue
        problems += _apply("image", im, _image_name(im), f)
        f.images[im.get("id")] = im
    records = [c for c in coco["categories"] if isinstance(c, dict)]
    problems += _duplicates(records, "categories", lambda c: f"category {c.get('id')}")
    records = [im for im in coco["images"] if isinstance(im, dict)]
    problems += _duplicates(records, "images", _image_name)
    counts = {len(c["keypoints"]) for c in f.categories.values() if c.get("keypoints")}
    f.defined_keypoints = counts.pop() if len(counts) == 1 else 0
    annotations = coco.get("annotations") or []
    if not all(isinstance(a, dict) for a in annotations):
        return problems + [Problem("the file", "'annotations'", "holds a non-object", "fix it")]
    problems += _duplicates(annotations, "annotations", lambda a: f"annotation {a.get('id')}")
    for ann in annotations:
        image = f.images.get(ann.get("image_id"))
        name = os.path.basename(str(image.get("file_name"))) if image else "?"
        where = f"annotation {ann.get('id')} (image {ann.get('image_id')}, {name})"
        if not is_int(ann.get("id")):
            problems.append(Problem(where, "id", f"{ann.get('id')!r} is not an int", "fix it"))
        elif image is None:
            problems.append(Problem(where, "image_id", "is not in the file's images", "add it"))
        else:
            problems += _apply("annotation", ann, where, f)
    return problems


def image_problems(coco: Dict, image_root: str, threads: int = 8) -> List[Problem]:
    """Problems of the image files a COCO json lists, read in threads (headers and last bytes)."""
    images = [
        im
        for im in coco.get("images", [])
        if isinstance(im, dict) and isinstance(im.get("file_name"), str)
    ]
    with ThreadPoolExecutor(threads) as pool:
        per_image = pool.map(
            lambda im: _apply("image file", im, _image_name(im), image_root), images
        )
        return [p for problems in per_image for p in problems]


def split_problems(splits) -> List[Problem]:
    """Problems between the datasets of a run: [(name, coco, evaluated)], training ones first."""
    return [Problem(*item) for item in _split_agreement(splits, None)]


def format_problems(source: str, problems: List[Problem]) -> str:
    """One message: the source, the first ``SHOWN`` problems, and how many more."""
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    listed = "\n".join(f"  {p}" for p in problems[:SHOWN])
    return f"{source}: {len(problems)} problem(s):\n{listed}{more}"
