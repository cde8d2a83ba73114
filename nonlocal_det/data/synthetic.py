"""
A small COCO-format dataset that nonlocal_det generates itself, so that detection, instance
segmentation and keypoint detection train and evaluate end to end without COCO.

Each image holds a few objects on a noisy background: filled circles, squares and triangles
(boxes + polygon masks), and "person" stick figures carrying the 17 COCO keypoints (with
COCO's names, flip map and skeleton). Generation is deterministic for a seed and needs only
numpy and OpenCV; registering it needs Detectron2.

    python -m nonlocal_det.data --out datasets/nonlocal_synthetic
"""
import json
import math
import os
from typing import Dict, List

import cv2
import numpy as np

CATEGORIES = ["person", "circle", "square", "triangle"]
KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# COCO's skeleton, 1-based keypoint indices.
SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
    [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip
SPLITS = {"train": 0, "val": 1}  # split -> seed offset, so val images are never train images
DEFAULT_SIZES = {"train": 400, "val": 100}


def _polygon_from_mask(mask: np.ndarray) -> List[List[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def _person(rng, canvas, cx, cy, scale, color):
    """Draw a stick figure; return its mask and 17 (x, y, v) keypoints (left = image right)."""
    h, w = canvas.shape[:2]
    s = scale
    lean = rng.uniform(-0.15, 0.15)
    arm = rng.uniform(-0.6, 0.6, size=2)
    leg = rng.uniform(-0.3, 0.3, size=2)
    head = np.array([cx + lean * s, cy - 0.75 * s])
    neck = np.array([cx + lean * 0.7 * s, cy - 0.55 * s])
    pelvis = np.array([cx, cy + 0.05 * s])
    pts = {
        "nose": head + [0, 0.03 * s],
        "left_eye": head + [0.05 * s, -0.03 * s],
        "right_eye": head + [-0.05 * s, -0.03 * s],
        "left_ear": head + [0.1 * s, 0],
        "right_ear": head + [-0.1 * s, 0],
        "left_shoulder": neck + [0.18 * s, 0.02 * s],
        "right_shoulder": neck + [-0.18 * s, 0.02 * s],
        "left_hip": pelvis + [0.12 * s, 0],
        "right_hip": pelvis + [-0.12 * s, 0],
    }
    for side, sign, a in (("left", 1, arm[0]), ("right", -1, arm[1])):
        shoulder = pts[f"{side}_shoulder"]
        elbow = shoulder + [sign * 0.12 * s, 0.25 * s + a * 0.1 * s]
        pts[f"{side}_elbow"] = elbow
        pts[f"{side}_wrist"] = elbow + [sign * (0.1 + 0.15 * abs(a)) * s, (0.2 - 0.3 * a) * s]
    for side, sign, l in (("left", 1, leg[0]), ("right", -1, leg[1])):
        hip = pts[f"{side}_hip"]
        knee = hip + [sign * 0.05 * s + l * 0.2 * s, 0.33 * s]
        pts[f"{side}_knee"] = knee
        pts[f"{side}_ankle"] = knee + [l * 0.15 * s, 0.33 * s]
    mask = np.zeros((h, w), np.uint8)
    thickness = max(2, int(0.07 * s))

    def line(a, b):
        for img, c in ((canvas, color), (mask, 1)):
            cv2.line(img, tuple(int(v) for v in a), tuple(int(v) for v in b), c, thickness, cv2.LINE_AA)

    line(neck, pelvis)
    for a, b in (
        ("left_shoulder", "right_shoulder"), ("left_hip", "right_hip"),
        ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
        ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
        ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
        ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    ):  # fmt: skip
        line(pts[a], pts[b])
    radius = int(0.13 * s)
    for img, c in ((canvas, color), (mask, 1)):
        cv2.circle(img, tuple(int(v) for v in head), radius, c, -1, cv2.LINE_AA)
    keypoints = []
    for name in KEYPOINT_NAMES:
        x, y = pts[name]
        inside = 0 <= x < w and 0 <= y < h
        keypoints += [float(x), float(y), 2] if inside else [0.0, 0.0, 0]
    return mask, keypoints


def _shape(rng, canvas, kind, cx, cy, scale, color):
    h, w = canvas.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    r = scale / 2
    if kind == "circle":
        for img, c in ((canvas, color), (mask, 1)):
            cv2.circle(img, (int(cx), int(cy)), int(r), c, -1, cv2.LINE_AA)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        corners = 4 if kind == "square" else 3
        poly = np.array(
            [[cx + r * math.cos(angle + 2 * math.pi * i / corners), cy + r * math.sin(angle + 2 * math.pi * i / corners)] for i in range(corners)],
            np.int32,
        )
        for img, c in ((canvas, color), (mask, 1)):
            cv2.fillPoly(img, [poly], c, cv2.LINE_AA)
    return mask


def generate_image(rng: np.random.RandomState, height: int, width: int):
    """One image (H, W, 3) uint8 BGR and its object dicts (category, mask, keypoints or None)."""
    base = rng.randint(0, 256, size=3)
    canvas = np.clip(base + rng.normal(0, 18, size=(height, width, 3)), 0, 255).astype(np.uint8)
    canvas = cv2.GaussianBlur(canvas, (5, 5), 0)
    objects = []
    occupied = np.zeros((height, width), bool)
    for _ in range(rng.randint(1, 5)):
        kind = CATEGORIES[rng.randint(len(CATEGORIES))]
        scale = rng.uniform(0.25, 0.55) * min(height, width) * (1.3 if kind == "person" else 1.0)
        cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.2, 0.8) * height
        color = tuple(int(c) for c in (base + rng.randint(70, 186, size=3)) % 256)
        trial = canvas.copy()
        if kind == "person":
            mask, keypoints = _person(rng, trial, cx, cy, scale, color)
        else:
            mask, keypoints = _shape(rng, trial, kind, cx, cy, scale, color), None
        mask = mask.astype(bool)
        if mask.sum() < 80 or (mask & occupied).sum() > 0.1 * mask.sum():
            continue  # too small, or hides too much of an earlier object
        canvas, occupied = trial, occupied | mask
        objects.append({"category": kind, "mask": mask, "keypoints": keypoints})
    return canvas, objects


def generate_split(out_dir: str, split: str, num_images: int, *, seed: int = 0, height: int = 192, width: int = 256) -> str:
    """Write ``out_dir/<split>/*.png`` and ``out_dir/annotations/<split>.json``; return the json path."""
    rng = np.random.RandomState(seed * 1000 + SPLITS[split])
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        canvas, objects = generate_image(rng, height, width)
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(os.path.join(image_dir, file_name), canvas)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            ys, xs = np.nonzero(obj["mask"])
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            keypoints = obj["keypoints"] or [0] * (3 * len(KEYPOINT_NAMES))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORIES.index(obj["category"]) + 1,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float(obj["mask"].sum()),
                    "segmentation": _polygon_from_mask(obj["mask"]),
                    "iscrowd": 0,
                    "keypoints": keypoints,
                    "num_keypoints": int(sum(1 for v in keypoints[2::3] if v > 0)),
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)]
    categories[0].update(supercategory="person", keypoints=list(KEYPOINT_NAMES), skeleton=SKELETON)
    json_path = os.path.join(out_dir, "annotations", f"{split}.json")
    tmp = json_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    os.replace(tmp, json_path)
    return json_path


def generate(out_dir: str, sizes: Dict[str, int] = None, *, seed: int = 0) -> Dict[str, str]:
    """Generate every split; {split: json path}."""
    sizes = sizes or DEFAULT_SIZES
    return {split: generate_split(out_dir, split, n, seed=seed) for split, n in sizes.items()}
