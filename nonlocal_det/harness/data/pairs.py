"""
A generated detection task where every object needs its own partner: "whose lamp is yours". Each
image holds ``PAIRS`` shape-lamp pairs, each of its own hue; a shape's category is its lamp's glyph,
every lamp at least ``MIN_GAP`` px from every shape's box (datasets/README.md describes the task).

    python -m nonlocal_det.harness.data --dataset pairs
"""

import colorsys
from typing import Dict

import cv2
import numpy as np

from .coco_format import prefix_categories, write_split
from .long_range import HEIGHT, SHAPES, WIDTH, _disc, _fits, _shape_mask, noisy_canvas

GLYPHS = ("solid", "hollow")
TEAMS = [f"team_{g}" for g in GLYPHS]
LAMPS = [f"lamp_{g}" for g in GLYPHS]
CATEGORIES = [*TEAMS, *LAMPS]
PAIRS = 4  # per image, two of each glyph
LAMP_RADIUS = 14
RING_INNER_RADIUS = 7  # a hollow lamp's hole, background-filled
RIM = 2  # px of white at a lamp's edge: lamps and circles differ locally
# The lamps stand in one column at the image's end, one in each 32-px cell: a res4 key cell
# (16 px, 2x2-pooled) then holds one lamp, never parts of two.
CELL = 32
MIN_GAP = 256  # px between every lamp's box and every shape's box, horizontally
MIN_HUE_GAP = 30.0  # degrees between the hues of two pairs of one image
SATURATION, VALUE = 0.85, 0.9
DEFAULT_SIZES = {"train": 400, "val": 100}
DIRECTORY = "nonlocal_pairs"  # under $DETECTRON2_DATASETS; the registered names' prefix
VERSION = 2  # 2: one lamp per 32-px cell (1: lamps anywhere in an 80-px band)


def _hues(rng, count: int) -> np.ndarray:
    """``count`` hues in degrees, pairwise at least MIN_HUE_GAP apart around the circle."""
    while True:
        hues = rng.uniform(0, 360, size=count)
        gaps = np.abs(hues[:, None] - hues[None, :])
        gaps = np.minimum(gaps, 360 - gaps) + 360 * np.eye(count)
        if gaps.min() >= MIN_HUE_GAP:
            return hues


def hue_to_bgr(hue: float):
    r, g, b = colorsys.hsv_to_rgb(hue / 360.0, SATURATION, VALUE)
    return tuple(int(round(255 * c)) for c in (b, g, r))


def _place_shape(rng, kind: str, zone, occupied: np.ndarray):
    """A ``kind`` mask of random size in the columns ``zone``, overlapping nothing, or None."""
    for _ in range(50):
        cx, size = rng.uniform(*zone), rng.uniform(28, 44)
        if not zone[0] + size / 2 <= cx <= zone[1] - size / 2:
            continue
        cy = rng.uniform(size / 2 + 2, HEIGHT - size / 2 - 2)
        mask = _shape_mask(rng, kind, cx, cy, size)
        if mask.sum() >= 80 and _fits(mask, zone, occupied):
            return mask
    return None


def _box(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def generate_image(rng: np.random.RandomState):
    """One (HEIGHT, WIDTH, 3) uint8 BGR image, its objects [{"category", "mask"}] (the shapes, then
    the lamps) and its image entry's pairs [{"shape_box", "lamp_box", "team", "hue"}] (boxes XYXY,
    in pixels; not a COCO field, tools/attention_mass.py reads it). Where the shapes do not fit, it
    draws again (on from the random state it reached)."""
    lamps_left = bool(rng.randint(2))
    background = rng.randint(60, 200)
    canvas = noisy_canvas(rng, background, 12)
    lamp_x = CELL // 2 if lamps_left else WIDTH - CELL // 2
    lamp_rows = rng.permutation(HEIGHT // CELL)[:PAIRS]  # the cell row of each pair's lamp
    # Lamps lie within CELL px of the end, so shapes clear every lamp box by MIN_GAP from here on.
    shape_zone = (CELL + MIN_GAP, WIDTH - 4) if lamps_left else (4, WIDTH - CELL - MIN_GAP)
    hues = _hues(rng, PAIRS)
    glyphs = rng.permutation([GLYPHS[i % 2] for i in range(PAIRS)])
    occupied = np.zeros((HEIGHT, WIDTH), bool)
    shapes, lamps, pairs = [], [], []
    for hue, glyph, row in zip(hues, glyphs, lamp_rows):
        shape = _place_shape(rng, SHAPES[rng.randint(len(SHAPES))], shape_zone, occupied)
        if shape is None:
            return generate_image(rng)  # start over
        occupied |= shape
        lamp = _disc((lamp_x, CELL * int(row) + CELL // 2), LAMP_RADIUS)
        colour = hue_to_bgr(hue)
        canvas[shape] = colour
        canvas[lamp] = (255, 255, 255)
        ys, xs = np.nonzero(lamp)
        centre = (int(round(xs.mean())), int(round(ys.mean())))
        cv2.circle(canvas, centre, LAMP_RADIUS - RIM, colour, -1, cv2.LINE_AA)
        if glyph == "hollow":
            cv2.circle(canvas, centre, RING_INNER_RADIUS, (background,) * 3, -1, cv2.LINE_AA)
        shapes.append({"category": f"team_{glyph}", "mask": shape})
        lamps.append({"category": f"lamp_{glyph}", "mask": lamp})
        boxes = {"shape_box": _box(shape), "lamp_box": _box(lamp)}
        pairs.append({**boxes, "team": f"team_{glyph}", "hue": round(float(hue), 3)})
    return canvas, shapes + lamps, {"pairs": pairs}


def generate_split(out_dir: str, split: str, num_images: int, *, seed: int = 0) -> str:
    """Write ``out_dir/<split>/*.png`` and ``annotations/<split>.json``; return the json path."""
    info = {"description": "nonlocal_det pairs task", "version": VERSION, "seed": seed}
    info.update(min_gap_px=MIN_GAP, min_hue_gap_deg=MIN_HUE_GAP)
    categories = prefix_categories(CATEGORIES)
    return write_split(out_dir, split, num_images, generate_image, info, categories, DIRECTORY)


def generate(out_dir: str, sizes: Dict[str, int] = None, *, seed: int = 0) -> Dict[str, str]:
    """Generate every split; {split: json path}."""
    sizes = sizes or DEFAULT_SIZES
    return {split: generate_split(out_dir, split, n, seed=seed) for split, n in sizes.items()}
