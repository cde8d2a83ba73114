"""
Writing the generated datasets in COCO's format: a split's images and annotation file, each drawn
object annotated with its box, area and polygons from its mask. The generators (``synthetic``,
``long_range``, ``pairs``) draw their images their own way and write them through ``write_split``.
"""

import hashlib
import json
import os
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from ..io import write_json

SPLITS = {"train": 0, "val": 1}  # split -> seed offset, so val images are never train images
# The key in a generated file's "info" that marks it as the generator's own, intact.
MARKER_KEY = "nonlocal_det_marker"


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


def prefix_categories(names: List[str]) -> List[Dict]:
    """COCO categories of ``names``, each of the supercategory its prefix names (team_red: team)."""
    return [{"id": i + 1, "name": n, "supercategory": n.split("_")[0]} for i, n in enumerate(names)]


def _digest(content: Dict) -> str:
    """sha256 of ``content`` as canonical JSON, without its marker."""
    info = {k: v for k, v in content.get("info", {}).items() if k != MARKER_KEY}
    canonical = json.dumps({**content, "info": info}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_split(
    out_dir: str, split: str, num_images: int, draw, info: Dict, categories: List, generator: str
) -> str:
    """``num_images`` images drawn by ``draw(rng)`` from the split's own random stream (seeded by
    ``info["seed"]``), written as ``out_dir/<split>/<id:06d>.png``, and their annotation file
    ``out_dir/annotations/<split>.json``, written atomically with the marker of ``generator`` (a
    dataset directory name) and ``info["version"]``; returns its path. ``draw`` returns an (H, W, 3)
    BGR image, its objects [{"category": name, "mask", optional "fields": more annotation fields}]
    and more fields of its image entry."""
    rng = np.random.RandomState(info["seed"] * 1000 + SPLITS[split])
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    names = [c["name"] for c in categories]
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        canvas, objects, fields = draw(rng)
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(os.path.join(out_dir, split, file_name), canvas)
        height, width = canvas.shape[:2]
        image = {"id": image_id, "file_name": file_name, "height": height, "width": width}
        images.append({**image, **fields})
        for obj in objects:
            category_id = names.index(obj["category"]) + 1
            annotation = mask_annotation(obj["mask"], len(annotations) + 1, image_id, category_id)
            annotations.append({**annotation, **obj.get("fields", {})})
    json_path = os.path.join(out_dir, "annotations", f"{split}.json")
    content = {"info": info, "images": images, "annotations": annotations, "categories": categories}
    marker = {"generator": generator, "version": info["version"], "digest": _digest(content)}
    write_json(json_path, {**content, "info": {**info, MARKER_KEY: marker}})
    return json_path


def marker_of(json_path: str) -> Optional[Tuple[str, int]]:
    """(generator, version) of a file ``write_split`` wrote and nobody changed since; None for any
    other file (edited, truncated, not JSON, another writer's)."""
    try:
        with open(json_path, encoding="utf-8") as f:
            content = json.load(f)
        marker = content["info"][MARKER_KEY]
        if marker["digest"] == _digest(content):
            return marker["generator"], marker["version"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None
