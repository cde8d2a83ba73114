"""
Writing the generated datasets in COCO's format: a drawn object's annotation (box, area, polygons
from its mask) and a split's annotation file. Both generators (``synthetic``, ``long_range``) draw
their images their own way and write them through these.
"""

import hashlib
import json
import os
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from ..io import write_json

__all__ = [
    "split_image_dir",
    "save_image",
    "polygon_from_mask",
    "mask_annotation",
    "write_split_json",
    "marker_of",
]


def split_image_dir(out_dir: str, split: str) -> str:
    """Create ``out_dir/<split>`` and ``out_dir/annotations``; returns the former."""
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    return image_dir


def save_image(image_dir: str, image_id: int, canvas: np.ndarray) -> str:
    """Write the (H, W, 3) BGR ``canvas`` as ``<image_id:06d>.png``; returns its file name."""
    file_name = f"{image_id:06d}.png"
    cv2.imwrite(os.path.join(image_dir, file_name), canvas)
    return file_name


def polygon_from_mask(mask: np.ndarray) -> List[List[float]]:
    """The outer contours of a binary (H, W) mask as COCO polygons [x1, y1, x2, y2, ...]."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def mask_annotation(mask: np.ndarray, annotation_id: int, image_id: int, category_id: int) -> Dict:
    """A non-crowd COCO annotation of the object drawn as the binary (H, W) ``mask``."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "area": float(mask.sum()),
        "segmentation": polygon_from_mask(mask),
        "iscrowd": 0,
    }


# The key in a generated file's "info" that marks it as the generator's own, intact.
MARKER_KEY = "nonlocal_det_marker"


def _digest(content: Dict) -> str:
    """sha256 of ``content`` as canonical JSON, without its marker."""
    info = {k: v for k, v in content.get("info", {}).items() if k != MARKER_KEY}
    canonical = json.dumps({**content, "info": info}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_split_json(
    out_dir: str,
    split: str,
    info: Dict,
    images: List,
    annotations: List,
    categories: List,
    *,
    generator: str,
) -> str:
    """
    ``out_dir/annotations/<split>.json``, written atomically with the marker of ``generator``
    (a dataset directory name) and ``info["version"]``; returns its path.
    """
    json_path = os.path.join(out_dir, "annotations", f"{split}.json")
    content = {"info": info, "images": images, "annotations": annotations, "categories": categories}
    marker = {"generator": generator, "version": info["version"], "digest": _digest(content)}
    write_json(json_path, {**content, "info": {**info, MARKER_KEY: marker}})
    return json_path


def marker_of(json_path: str) -> Optional[Tuple[str, int]]:
    """(generator, version) of a file ``write_split_json`` wrote and nobody changed since; None
    for any other file (edited, truncated, not JSON, another writer's)."""
    try:
        with open(json_path, encoding="utf-8") as f:
            content = json.load(f)
        marker = content["info"][MARKER_KEY]
        if marker["digest"] == _digest(content):
            return marker["generator"], marker["version"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None
