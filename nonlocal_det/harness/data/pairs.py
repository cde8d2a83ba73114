"""
A generated detection task where every object needs its own partner: "whose lamp is yours".

Each 128x512 image holds ``PAIRS`` = 4 pairs. A pair is a shape (circle, square or triangle,
random size and rotation) and its partner lamp, a disc of radius 14 px inside a white rim that no
shape has, either solid (``lamp_solid``) or hollow, a ring (``lamp_hollow``). Shape and partner
are filled with the same colour, the pair's key: a hue drawn at random for every pair, at least
``MIN_HUE_GAP`` degrees (on the hue circle) from every other pair's hue in the image. A shape's
category is its partner's glyph: ``team_solid`` or ``team_hollow``; every image holds two lamps
of each glyph. Nothing of a shape's own appearance depends on its team (its hue is random), so a
detector finds it but can only guess its category, unless it relates the shape to the one lamp
of its own colour.

All lamps lie in one column at one end of the image (left or right at random), each in its own
32-px cell (rows drawn at random), all shapes at the other end, every shape's box at least
``MIN_GAP`` = 256 px (horizontally) from every lamp's box: as
in ``nonlocal_longrange``, beyond the receptive field of the features a ResNet-18-FPN Mask R-CNN
reads for a box. Unlike it, the evidence differs from one shape to the next: one summary of the
image that is the same for every shape (a GC block's) has to carry four hue-to-glyph bindings at
once, where a query-specific block can look up the one lamp of the query's colour
(docs/ablation.md). Boxes and polygon masks in COCO format; train and val from separate random
streams; the pairing is stored in each image entry (``pairs``: shape box, lamp box, team, hue),
read by tools/attention_mass.py. Generation is deterministic for a seed.

    python -m nonlocal_det.harness.data --dataset pairs
"""

import colorsys
from typing import Dict

import cv2
import numpy as np

from .coco_format import mask_annotation, save_image, split_image_dir, write_split_json
from .long_range import _shape_mask

GLYPHS = ("solid", "hollow")
TEAMS = [f"team_{g}" for g in GLYPHS]
LAMPS = [f"lamp_{g}" for g in GLYPHS]
CATEGORIES = [*TEAMS, *LAMPS]
HEIGHT, WIDTH = 128, 512
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
SHAPES = ("circle", "square", "triangle")
SPLITS = {"train": 0, "val": 1}  # split -> seed offset
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


def _place(rng, occupied, zone, make_mask, tries: int = 50):
    """A mask from ``make_mask(cx, cy)`` inside ``zone`` (x0, x1) overlapping nothing, or None."""
    for _ in range(tries):
        mask = make_mask(rng.uniform(*zone))
        if mask is None:
            continue
        xs = np.nonzero(mask.any(axis=0))[0]
        if xs.min() >= zone[0] and xs.max() < zone[1] and not (mask & occupied).any():
            return mask
    return None


def generate_image(rng: np.random.RandomState):
    """
    One (HEIGHT, WIDTH, 3) uint8 BGR image, its objects [{"category", "mask"}] (the shapes, then
    the lamps) and its pairs [{"shape", "lamp", "team", "hue"}] (object indices into the former),
    or None when the shapes could not be placed (the caller draws again).
    """
    lamps_left = bool(rng.randint(2))
    background = rng.randint(60, 200)
    canvas = np.clip(background + rng.normal(0, 12, size=(HEIGHT, WIDTH, 3)), 0, 255)
    canvas = cv2.GaussianBlur(canvas.astype(np.uint8), (5, 5), 0)
    lamp_x = CELL // 2 if lamps_left else WIDTH - CELL // 2
    lamp_rows = rng.permutation(HEIGHT // CELL)[:PAIRS]  # the cell row of each pair's lamp
    # Lamps lie within CELL px of the end, so shapes clear every lamp box by MIN_GAP from here on.
    shape_zone = (CELL + MIN_GAP, WIDTH - 4) if lamps_left else (4, WIDTH - CELL - MIN_GAP)
    hues = _hues(rng, PAIRS)
    glyphs = rng.permutation([GLYPHS[i % 2] for i in range(PAIRS)])
    occupied = np.zeros((HEIGHT, WIDTH), bool)

    def lamp_mask(row):
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        cv2.circle(mask, (lamp_x, CELL * int(row) + CELL // 2), LAMP_RADIUS, 1, -1, cv2.LINE_AA)
        return mask.astype(bool)

    def shape_mask(cx, kind):
        size = rng.uniform(28, 44)
        if not shape_zone[0] + size / 2 <= cx <= shape_zone[1] - size / 2:
            return None
        cy = rng.uniform(size / 2 + 2, HEIGHT - size / 2 - 2)
        mask = _shape_mask(rng, kind, cx, cy, size)
        return mask if mask.sum() >= 80 else None

    shapes, lamps = [], []
    for hue, glyph, row in zip(hues, glyphs, lamp_rows):
        kind = SHAPES[rng.randint(len(SHAPES))]
        shape = _place(rng, occupied, shape_zone, lambda cx, kind=kind: shape_mask(cx, kind))
        if shape is None:
            return None
        occupied |= shape
        lamp = lamp_mask(row)
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
    pairs = [
        {"shape": i, "lamp": PAIRS + i, "team": f"team_{glyphs[i]}", "hue": float(hues[i])}
        for i in range(PAIRS)
    ]
    return canvas, shapes + lamps, pairs


def _box(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def generate_split(out_dir: str, split: str, num_images: int, *, seed: int = 0) -> str:
    """
    Write ``out_dir/<split>/*.png`` and ``out_dir/annotations/<split>.json``; return the json path.
    """
    rng = np.random.RandomState(seed * 1000 + SPLITS[split])
    image_dir = split_image_dir(out_dir, split)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        drawn = None
        while drawn is None:
            drawn = generate_image(rng)
        canvas, objects, pairs = drawn
        file_name = save_image(image_dir, image_id, canvas)
        # pairs: not a COCO field; tools/attention_mass.py reads it (boxes XYXY, in pixels).
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": HEIGHT,
                "width": WIDTH,
                "pairs": [
                    {
                        "shape_box": _box(objects[p["shape"]]["mask"]),
                        "lamp_box": _box(objects[p["lamp"]]["mask"]),
                        "team": p["team"],
                        "hue": round(p["hue"], 3),
                    }
                    for p in pairs
                ],
            }
        )
        for obj in objects:
            category_id = CATEGORIES.index(obj["category"]) + 1
            annotations.append(
                mask_annotation(obj["mask"], len(annotations) + 1, image_id, category_id)
            )
    categories = [
        {"id": i + 1, "name": name, "supercategory": name.split("_")[0]}
        for i, name in enumerate(CATEGORIES)
    ]
    info = {
        "description": "nonlocal_det pairs task",
        "version": VERSION,
        "seed": seed,
        "min_gap_px": MIN_GAP,
        "min_hue_gap_deg": MIN_HUE_GAP,
    }
    return write_split_json(
        out_dir, split, info, images, annotations, categories, generator=DIRECTORY
    )


def generate(out_dir: str, sizes: Dict[str, int] = None, *, seed: int = 0) -> Dict[str, str]:
    """Generate every split; {split: json path}."""
    sizes = sizes or DEFAULT_SIZES
    return {split: generate_split(out_dir, split, n, seed=seed) for split, n in sizes.items()}
