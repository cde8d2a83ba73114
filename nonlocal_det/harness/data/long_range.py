"""
A generated detection task whose labels need context from far away: "which team's lamp is lit".
Every shape's category is the colour of a lamp at least ``MIN_GAP`` = 256 px from its box, beyond
the baseline's receptive field (datasets/README.md describes the task).

    python -m nonlocal_det.harness.data --dataset long_range
"""

import math
from typing import Dict, List

import cv2
import numpy as np

from .coco_format import prefix_categories, write_split

TEAMS = ["team_red", "team_green"]
LAMPS = {"team_red": "lamp_red", "team_green": "lamp_green"}
CATEGORIES = [*TEAMS, *LAMPS.values()]
LAMP_COLORS_BGR = {"team_red": (40, 40, 220), "team_green": (40, 200, 40)}
HEIGHT, WIDTH = 128, 512
LAMP_RADIUS = 20
LAMP_MARGIN = 8  # between the lamp and the image's end
MIN_GAP = 256  # px between the lamp's box and every shape's box, horizontally
SHAPES = ("circle", "square", "triangle")
DEFAULT_SIZES = {"train": 400, "val": 100}
DIRECTORY = "nonlocal_longrange"  # under $DETECTRON2_DATASETS; the registered names' prefix
VERSION = 2

# Drawing shared by the generators (pairs.py, synthetic.py): backgrounds, shapes, placement.


def noisy_canvas(rng, mean, sigma: float, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A blurred (height, width, 3) uint8 image of ``mean`` (grey or BGR) plus Gaussian noise."""
    canvas = np.clip(mean + rng.normal(0, sigma, size=(height, width, 3)), 0, 255)
    return cv2.GaussianBlur(canvas.astype(np.uint8), (5, 5), 0)


def regular_polygon(rng, corners: int, cx: float, cy: float, r: float) -> List[List[float]]:
    """The corners of a regular polygon around (cx, cy) of circumradius ``r``, randomly rotated."""
    angle = rng.uniform(0, 2 * math.pi)
    angles = [angle + 2 * math.pi * i / corners for i in range(corners)]
    return [[cx + r * math.cos(a), cy + r * math.sin(a)] for a in angles]


def _disc(centre, radius: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    cv2.circle(mask, centre, radius, 1, -1, cv2.LINE_AA)
    return mask.astype(bool)


def _shape_mask(rng, kind: str, cx: float, cy: float, size: float) -> np.ndarray:
    r = size / 2
    if kind == "circle":
        return _disc((int(round(cx)), int(round(cy))), int(round(r)))
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    poly = regular_polygon(rng, 4 if kind == "square" else 3, cx, cy, r)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1, cv2.LINE_AA)
    return mask.astype(bool)


def _fits(mask: np.ndarray, zone, occupied: np.ndarray) -> bool:
    """Whether ``mask`` lies within the columns [zone[0], zone[1]) and overlaps nothing occupied."""
    xs = np.nonzero(mask.any(axis=0))[0]
    return xs.min() >= zone[0] and xs.max() < zone[1] and not (mask & occupied).any()


def generate_image(rng: np.random.RandomState):
    """One (HEIGHT, WIDTH, 3) uint8 BGR image, its objects [{"category", "mask"}] (shapes, then the
    lamp) and its image entry's lamp_box (x0, y0, x1, y1) and lamp_team."""
    team = TEAMS[rng.randint(len(TEAMS))]
    lamp_left = bool(rng.randint(2))
    background = rng.randint(60, 200)  # grey level; colour only in the lamp
    canvas = noisy_canvas(rng, background, 12)

    lamp_x = LAMP_MARGIN + LAMP_RADIUS if lamp_left else WIDTH - LAMP_MARGIN - LAMP_RADIUS
    lamp_y = rng.uniform(LAMP_RADIUS + 4, HEIGHT - LAMP_RADIUS - 4)
    lamp_mask = _disc((lamp_x, int(round(lamp_y))), LAMP_RADIUS)
    canvas[lamp_mask] = LAMP_COLORS_BGR[team]
    r = LAMP_RADIUS
    lamp_box = (lamp_x - r, lamp_y - r, lamp_x + r, lamp_y + r)

    # Shapes live in the far zone: their boxes start MIN_GAP px beyond the lamp's box.
    zone = (lamp_box[2] + MIN_GAP, WIDTH - 4) if lamp_left else (4, lamp_box[0] - MIN_GAP)
    objects = []
    occupied = np.zeros((HEIGHT, WIDTH), bool)
    for _ in range(rng.randint(2, 5)):
        kind = SHAPES[rng.randint(len(SHAPES))]
        for _attempt in range(5):
            size = rng.uniform(32, 60)
            cx = rng.uniform(zone[0] + size / 2, zone[1] - size / 2)
            cy = rng.uniform(size / 2 + 2, HEIGHT - size / 2 - 2)
            mask = _shape_mask(rng, kind, cx, cy, size)
            if mask.sum() >= 80 and _fits(mask, zone, occupied):
                grey = int(np.clip(background + rng.choice([-1, 1]) * rng.uniform(45, 90), 0, 255))
                canvas[mask] = grey
                occupied |= mask
                objects.append({"category": team, "mask": mask})
                break
    objects.append({"category": LAMPS[team], "mask": lamp_mask})
    # lamp_box / lamp_team: not COCO fields; tools/attention_mass.py reads them.
    return canvas, objects, {"lamp_box": [float(v) for v in lamp_box], "lamp_team": team}


def generate_split(out_dir: str, split: str, num_images: int, *, seed: int = 0) -> str:
    """Write ``out_dir/<split>/*.png`` and ``annotations/<split>.json``; return the json path."""
    info = {"description": "nonlocal_det long-range task", "version": VERSION, "seed": seed}
    info["min_gap_px"] = MIN_GAP
    categories = prefix_categories(CATEGORIES)
    return write_split(out_dir, split, num_images, generate_image, info, categories, DIRECTORY)


def generate(out_dir: str, sizes: Dict[str, int] = None, *, seed: int = 0) -> Dict[str, str]:
    """Generate every split; {split: json path}."""
    sizes = sizes or DEFAULT_SIZES
    return {split: generate_split(out_dir, split, n, seed=seed) for split, n in sizes.items()}
