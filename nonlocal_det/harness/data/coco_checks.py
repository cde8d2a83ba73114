"""
The data rules: one table (``DATA_RULES``, listed in docs/reliability.md) of what every COCO-format
file a run reads must meet, checked before anything trains: every field Detectron2's loader, its
mapper and pycocotools' evaluation read is present, of its type and range; fields describing one
object agree (box, mask, keypoints, image size); splits agree on what a category id means. Each
problem names the record, the field and the fix; all of a file's problems are reported together.
What Detectron2 handles stays accepted: crowd annotations (ignored in training), images without
annotations (skipped in training), boxes of zero width or height (dropped by the mapper).
"""

import math
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List

from PIL import Image

from ..io import is_int

__all__ = ["DATA_RULES", "Needs", "Problem", "annotation_problems", "image_problems"]
__all__ += ["split_problems", "format_problems"]

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


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finite(values, count=None) -> bool:
    """A list or tuple (of ``count`` items if given) of finite numbers."""
    if not isinstance(values, (list, tuple)) or count not in (None, len(values)):
        return False
    try:  # one pass in C for the common case; a bool, inf or nan goes the slow way
        return math.isfinite(math.fsum(values)) and {int, float}.issuperset(map(type, values))
    except (TypeError, OverflowError):
        return all(map(_number, values))


def _outside(points, ann) -> int:
    """How many ``points`` lie outside the box, enlarged by MASK_SLACK of its sides and EDGE_PX;
    0 for a crowd annotation or a box that is not 4 finite numbers of positive size."""
    box = ann.get("bbox")
    if ann.get("iscrowd", 0) or not _finite(box, 4) or min(box[2:]) <= 0:
        return 0
    x, y, w, h = box
    dx, dy = MASK_SLACK * w + EDGE_PX, MASK_SLACK * h + EDGE_PX
    return sum(not (x - dx <= px <= x + w + dx and y - dy <= py <= y + h + dy) for px, py in points)


# ------------------------------------------------------------------ the checks, one per rule


def _file_shape(coco, _):
    if not isinstance(coco, dict):
        yield "top level", f"is a JSON {type(coco).__name__}", "write {'images': [...], ...}"
        return
    for key in ("images", "categories", "annotations"):
        value = coco.get(key)
        wrong = not isinstance(value, list) or (key == "categories" and not value)
        if wrong and (value is not None or key != "annotations"):
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
    cid = ann.get("category_id")
    if cid not in f.categories:
        what = f"{cid!r} is not among the file's categories {sorted(f.categories)}"
        yield "category_id", what, "add the category or fix the id"
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
        what = f"{bbox} has a negative {'width' if w < 0 else 'height'}"
        fix = "COCO boxes are [x, y, width, height] with width, height >= 0 (not [x0, y0, x1, y1])"
        yield "bbox", what, fix
    elif not ann.get("iscrowd", 0) and is_int(width) and is_int(height):
        if x < -EDGE_PX or y < -EDGE_PX or x + w > width + EDGE_PX or y + h > height + EDGE_PX:
            what = f"{bbox} ends at ({x + w:g}, {y + h:g}), past the {width}x{height} image"
            fix = "COCO boxes are [x, y, width, height] (not [x0, y0, x1, y1]); fix the box"
            yield "bbox", what, fix


def _mask_box(segm, height, width):
    """The XYXY box of a polygon list or RLE, or a (field, problem, fix) triple."""
    if isinstance(segm, dict):
        from pycocotools import mask as mask_util

        if "counts" not in segm or list(segm.get("size", [])) != [height, width]:
            what = f"is an RLE of size {segm.get('size')}, the image is {height}x{width}"
            return "segmentation", what, "encode the mask at the image's size [height, width]"
        rle, counts = segm, segm["counts"]
        if isinstance(counts, list):
            if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                return "segmentation", "is an RLE whose counts do not sum to its size", "re-encode"
            rle = mask_util.frPyObjects(segm, height, width)
        try:
            mask_util.decode(rle)
        except (ValueError, TypeError) as e:
            return "segmentation", f"is an RLE that does not decode ({e})", "re-encode the mask"
        x, y, w, h = mask_util.toBbox(rle).tolist()
        return x, y, x + w, y + h
    for k, poly in enumerate(segm):
        finite = _finite(poly)
        if not finite or len(poly) % 2 or len(poly) < 6:
            what = f"has {len(poly)} coordinates" if finite else "is not finite numbers"
            fix = "a polygon is [x1, y1, x2, y2, ...], at least 3 points; Detectron2 would drop it"
            return f"segmentation[{k}]", what, fix
    xs = segm[0][0::2] if len(segm) == 1 else [v for poly in segm for v in poly[0::2]]
    ys = segm[0][1::2] if len(segm) == 1 else [v for poly in segm for v in poly[1::2]]
    return min(xs), min(ys), max(xs), max(ys)


def _mask(ann, f: _File):
    segm, crowd = ann.get("segmentation"), ann.get("iscrowd", 0)
    if segm is None or segm == []:
        if f.needs.masks and (not crowd or f.needs.evaluated):
            fix = (
                "give the annotation a mask (polygons or RLE), remove it, "
                "or set MODEL.MASK_ON False"
            )
            yield "segmentation", "is missing or empty, and the model has a mask head", fix
        return
    if not isinstance(segm, (dict, list)):
        yield "segmentation", f"is a {type(segm).__name__}", "give a list of polygons or an RLE"
        return
    if isinstance(segm, dict) and f.needs.masks and not crowd and f.needs.mask_format == "polygon":
        what = "is an RLE, and INPUT.MASK_FORMAT is 'polygon'"
        fix = "set INPUT.MASK_FORMAT 'bitmask' (Detectron2 reads RLE masks only as bitmasks)"
        yield "segmentation", what, fix
    image = f.images[ann["image_id"]]
    box = _mask_box(segm, image.get("height"), image.get("width"))
    if len(box) == 3:
        yield box
    elif _outside([box[:2], box[2:]], ann):
        what = f"spans {[round(v, 1) for v in box]} (XYXY), outside its bbox {ann['bbox']}"
        fix = "the mask and the box describe other objects: fix whichever is shifted"
        yield "segmentation", what, fix


def _keypoints(ann, f: _File):
    kps, crowd = ann.get("keypoints"), ann.get("iscrowd", 0)
    evaluated_keypoints = f.needs.keypoints and f.needs.evaluated
    if kps is None:
        if (f.needs.keypoints and not crowd) or evaluated_keypoints:
            fix = (
                "give every annotation its keypoints (v = 0 where not labelled), "
                "or set MODEL.KEYPOINT_ON False"
            )
            yield "keypoints", "are missing, and the model has a keypoint head", fix
        return
    if not _finite(kps) or len(kps) % 3:
        yield "keypoints", "is not a list of finite (x, y, v) triplets", "write [x1, y1, v1, ...]"
        return
    expected = f.defined_keypoints or f.needs.keypoints
    if expected and len(kps) != 3 * expected:
        source = "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS is"
        if f.defined_keypoints:
            source = "the dataset's categories define"
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
        what = f"is {count}, but {len(labelled)} keypoints have v > 0"
        fix = "give the count of labelled keypoints (pycocotools ignores a person with 0)"
        yield "num_keypoints", what, fix
    outside = _outside(labelled, ann)
    if outside > len(labelled) / 2:
        what = f"lie outside their bbox {ann['bbox']} ({outside} of {len(labelled)})"
        fix = "keypoints are (x, y, v) in image pixels: fix the keypoints or the box"
        yield "keypoints", what, fix


def _evaluated_fields(ann, f: _File):
    if not f.needs.evaluated:
        return
    if ann.get("iscrowd") is None:
        yield "iscrowd", "is missing", "pycocotools' evaluation reads it: give 0 or 1"
    if not _number(ann.get("area")) or ann["area"] < 0:
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
        what = (
            f"{path} has pixel mode {mode!r}, which Detectron2's reader clips to 8 bits: the "
            "model would see a blank image"
        )
        yield "file_name", what, "convert it to 8-bit RGB or grayscale"
    json_size = image.get("width"), image.get("height")
    if json_size != (width, height):
        what = f"{json_size[0]}x{json_size[1]} in the JSON, but the file is {width}x{height}"
        yield "width/height", what, "fix the JSON's width and height"


def _split_agreement(splits, _):
    """``splits``: [(name, coco, evaluated)], the training splits first."""
    trained = {}
    for name, coco, evaluated in splits:
        records = [c for c in coco.get("categories", []) if isinstance(c, dict)]
        cats = {c.get("id"): c.get("name") for c in records}
        for n, count in Counter(cats.values()).items():
            if count > 1:
                fix = "give each category its own name (evaluation reports AP by name)"
                yield name, "categories", f"name {n!r} is used by {count} ids", fix
        if not evaluated:
            trained.update(cats)
            continue
        if not trained:
            continue
        fix = "give every dataset of the run the training categories, ids and names alike"
        for cid in sorted(set(trained) - set(cats), key=str):
            why = "is missing here (Detectron2 numbers the categories of each file in turn)"
            yield name, f"category {cid} ({trained[cid]})", why, fix
        for cid, n in cats.items():
            if cid not in trained:
                yield name, f"category {cid} ({n})", "is not a training category", fix
            elif trained[cid] != n:
                what = f"is {n!r} here, {trained[cid]!r} in training"
                fix = (
                    "use the training split's id for every name "
                    "(else AP is scored against other classes)"
                )
                yield name, f"category {cid}", what, fix


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
         f"categories define; most labelled ones within the bbox (+-{MASK_SLACK:.0%}); "
         "'num_keypoints' the count with v > 0; with MODEL.KEYPOINT_ON every non-crowd annotation "
         "has them, and in an evaluated dataset every annotation", _keypoints),
    Rule("annotation", "in an evaluated dataset, 'iscrowd' and 'area' (a number >= 0), which "
         "pycocotools reads", _evaluated_fields),
    Rule("image file", "a file that reads as an image, whole (JPEG and PNG end with their end "
         "marker), of the JSON's width and height after its EXIF orientation, in a mode "
         f"Detectron2 decodes to 8 bits faithfully {list(DECODABLE_MODES)} "
         "(DATALOADER.CHECK_IMAGES False skips these reads)", _image_file),
    Rule("splits", "every dataset the run reads has the training datasets' categories exactly, "
         "the same ids with the same names (Detectron2 numbers each file's categories in "
         "order, so another set shifts or breaks the classes), and names are unique",
         _split_agreement),
)  # fmt: skip
_BY_SUBJECT = {r.subject: [q for q in DATA_RULES if q.subject == r.subject] for r in DATA_RULES}


def _apply(subject, record, where, context) -> List[Problem]:
    results = (rule.check(record, context) for rule in _BY_SUBJECT[subject])
    return [Problem(where, fld, problem, fix) for found in results for fld, problem, fix in found]


def _duplicates(records, section: str, describe) -> Iterable[Problem]:
    """A problem for each object among ``records`` whose id another one has too."""
    records = [r for r in records if isinstance(r, dict)]
    counts = Counter(r.get("id") for r in records if is_int(r.get("id")))
    for r in records:
        if counts.get(r.get("id"), 0) > 1:
            what = f"{r.get('id')} is used by {counts[r.get('id')]} {section}"
            yield Problem(describe(r), "id", what, f"give each of the {section} its own id")


def _image_name(image) -> str:
    return f"image {image.get('id')} ({image.get('file_name')})"


def annotation_problems(coco, needs: Needs = Needs()) -> List[Problem]:
    """Problems of a loaded COCO json against the rules of ``DATA_RULES`` (no file opened)."""
    problems = _apply("file", coco, "the file", None)
    if problems:
        return problems
    f = _File(needs)
    for index, c in enumerate(coco["categories"]):
        if isinstance(c, dict):
            problems += _apply("category", c, f"category {c.get('id')}", f)
            f.categories[c.get("id")] = c
        else:
            what = f"is {c!r:.40}"
            problems.append(Problem(f"category {index}", "record", what, "write an object"))
    for index, im in enumerate(coco["images"]):
        if isinstance(im, dict):
            problems += _apply("image", im, _image_name(im), f)
            f.images[im.get("id")] = im
        else:
            problems.append(Problem(f"images[{index}]", "record", f"is {im!r:.40}", "fix it"))
    problems += _duplicates(coco["categories"], "categories", lambda c: f"category {c.get('id')}")
    problems += _duplicates(coco["images"], "images", _image_name)
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


def _image_files(images, image_root) -> List[Problem]:
    return [p for im in images for p in _apply("image file", im, _image_name(im), image_root)]


def image_problems(coco: Dict, image_root: str, processes: int = os.cpu_count() or 1):
    """Problems of the image files a COCO json lists (headers and last bytes), read in
    ``processes`` in file order (PIL's header parsing holds the GIL: threads wait on each other)."""
    images = [im for im in coco.get("images", []) if isinstance(im, dict)]
    images = [im for im in images if isinstance(im.get("file_name"), str)]
    size = -(-len(images) // processes) if len(images) > 1000 else len(images) + 1
    chunks = [images[k : k + size] for k in range(0, len(images), size)]
    if len(chunks) < 2:
        return _image_files(images, image_root)
    with ProcessPoolExecutor(len(chunks)) as pool:
        found = pool.map(_image_files, chunks, [image_root] * len(chunks))
        return [p for problems in found for p in problems]


def split_problems(splits) -> List[Problem]:
    """Problems between the datasets of a run: [(name, coco, evaluated)], training ones first."""
    return [Problem(*item) for item in _split_agreement(splits, None)]


def format_problems(source: str, problems: List[Problem]) -> str:
    """One message: the source, the first ``SHOWN`` problems, and how many more."""
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    listed = "\n".join(f"  {p}" for p in problems[:SHOWN])
    return f"{source}: {len(problems)} problem(s):\n{listed}{more}"
