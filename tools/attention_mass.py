#!/usr/bin/env python
"""
What a trained model's non-local blocks attend to, over the config's first test set:

- **query specificity** of every non-local block (backbone and keypoint head): the mean
  Jensen-Shannon divergence between the attention maps of pairs of queries of one image (or one
  person RoI for head blocks), averaged over images; 0 for attention that is the same for every
  query (uniform, or the query-independent maps GCNet reported for blocks trained on COCO), 1
  when queries attend to disjoint keys. Beside it, the same measure for each block at
  initialisation (the config's model built without weights, applied to the trained model's
  block inputs). ``nonlocal_det.analysis.attention`` defines the measures.
- on ``nonlocal_longrange``, the **lamp mass** of the first backbone block: queries are the
  block's grid positions whose centres lie inside a shape's ground-truth box (not the lamp's),
  cue keys the key cells (2x2 pooled with sub-sampling) overlapping the lamp's box; mass = the
  queries' mean attention on the cue keys, beside the cue keys' share of all keys (uniform).

    python tools/attention_mass.py --config-file configs/longrange_NL.yaml \
        MODEL.WEIGHTS output/ablation/longrange_NL/seed0/model_final.pth
    python tools/attention_mass.py --config-file configs/quickstart.yaml \
        MODEL.WEIGHTS output/quickstart/model_final.pth --output output/attention.json
"""

import argparse
import json
import os

import numpy as np
import torch

from nonlocal_det.errors import exit_on_user_error
from nonlocal_det.utils.tool_config import (
    add_model_arguments,
    apply_debug,
    build_trained_model,
    load_config,
)


def cue_and_query_cells(lamp_box, gt_boxes, grid_hw, stride, key_cell):
    """
    Args:
        lamp_box: (x0, y0, x1, y1) in the network's input pixels; gt_boxes: (G, 4) likewise.
        grid_hw: the block's input grid (H, W); stride: input pixels per grid cell;
        key_cell: grid cells per key cell along each side (2 with sub-sampling, else 1).
    Returns:
        queries (Q, 2) (row, col) in the grid, cue mask (Hk, Wk) bool over key cells.
    """
    height, width = grid_hw
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    cy, cx = (rows + 0.5) * stride, (cols + 0.5) * stride
    inside = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in gt_boxes:
        inside |= (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
    key_h, key_w = -(-height // key_cell), -(-width // key_cell)
    size = stride * key_cell
    ku, kv = np.meshgrid(np.arange(key_h), np.arange(key_w), indexing="ij")
    x0, y0, x1, y1 = lamp_box
    cue = (kv * size < x1) & ((kv + 1) * size > x0) & (ku * size < y1) & ((ku + 1) * size > y0)
    return np.argwhere(inside), cue


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _lamp_boxes(dataset: str):
    from detectron2.data import MetadataCatalog

    with open(MetadataCatalog.get(dataset).json_file) as f:
        lamps = {im["file_name"]: im.get("lamp_box") for im in json.load(f)["images"]}
    return lamps if any(lamps.values()) else None


def _stride(model, image_height: int, grid_height: int) -> float:
    """Input pixels per cell of a backbone grid: the padded batch's height over the grid's."""
    divisibility = model.backbone.size_divisibility or 1
    return -(-image_height // divisibility) * divisibility / grid_height


def measure(cfg, max_images=None, random_ok=False):
    """
    {"images", "blocks": {name: {"specificity", "specificity_at_init", "maps"}}, "lamp": {...} or
    None} over the config's first test set.
    """
    from detectron2.data import DatasetCatalog
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image
    from detectron2.modeling import build_model
    from detectron2.structures import BoxMode

    from nonlocal_det.analysis.attention import (
        BlockInputs,
        attention_blocks,
        cue_mass,
        mean,
        query_maps,
        query_specificity,
    )

    dataset = cfg.DATASETS.TEST[0]
    lamps = _lamp_boxes(dataset)
    torch.manual_seed(0)
    at_init = attention_blocks(build_model(cfg).eval())
    model = build_trained_model(cfg, random_ok)
    blocks = attention_blocks(model)
    backbone_block = next((n for n in blocks if n.startswith("backbone.")), None)
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    scores = {n: {"trained": [], "init": []} for n in blocks}
    lamp_masses, lamp_uniforms, lamp_queries, used = [], [], 0, 0
    for record in DatasetCatalog.get(dataset)[:max_images]:
        image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        resized = aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        with torch.no_grad(), BlockInputs(blocks) as inputs:
            model([{"image": tensor}])
        used += 1
        for name, calls in inputs.items():
            for x, valid_sizes in calls:
                for i in range(x.shape[0]):  # the image, or each person RoI of the head
                    size = valid_sizes[i] if valid_sizes is not None else None
                    with torch.no_grad():
                        maps = query_maps(blocks[name], x[i : i + 1], size)
                        maps_init = query_maps(at_init[name], x[i : i + 1], size)
                    scores[name]["trained"].append(query_specificity(maps))
                    scores[name]["init"].append(query_specificity(maps_init))
                    if name == backbone_block and lamps is not None:
                        lamp = lamps.get(os.path.basename(record["file_name"]))
                        boxes = [
                            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                            for a in record.get("annotations", [])
                        ]
                        boxes = [b for b in boxes if lamp and not _overlaps(b, lamp)]
                        if not boxes:
                            continue
                        scale = resized.shape[0] / image.shape[0]
                        grid = tuple(size) if size is not None else tuple(x.shape[-2:])
                        queries, cue = cue_and_query_cells(
                            np.array(lamp) * scale,
                            np.array(boxes) * scale,
                            grid,
                            _stride(model, resized.shape[0], x.shape[-2]),
                            2 if blocks[name].sub_sample else 1,
                        )
                        if len(queries) == 0:
                            continue
                        flat = torch.as_tensor(queries[:, 0] * grid[1] + queries[:, 1])
                        result = cue_mass(maps[flat], torch.as_tensor(cue))
                        lamp_masses.append(result["mass"] * len(flat))
                        lamp_uniforms.append(result["uniform"] * len(flat))
                        lamp_queries += len(flat)
    out = {
        "images": used,
        "blocks": {
            name: {
                "specificity": mean(s["trained"]),
                "specificity_at_init": mean(s["init"]),
                "maps": len(s["trained"]),
            }
            for name, s in scores.items()
        },
        "lamp": None,
    }
    if lamp_queries:
        mass, uniform = sum(lamp_masses) / lamp_queries, sum(lamp_uniforms) / lamp_queries
        out["lamp"] = {
            "block": backbone_block,
            "queries": lamp_queries,
            "mass": mass,
            "uniform": uniform,
            "ratio": mass / uniform,
        }
    return out


def report(result) -> str:
    lines = [f"over {result['images']} images of the test set:"]
    for name, r in result["blocks"].items():
        lines.append(
            f"  {name}: query specificity {r['specificity']:.3f} (at initialisation "
            f"{r['specificity_at_init']:.3f}; uniform attention 0, disjoint 1; {r['maps']} maps)"
        )
    lamp = result["lamp"]
    if lamp:
        lines.append(
            f"  {lamp['block']}: over {lamp['queries']} shape queries, {100 * lamp['mass']:.1f}% "
            "of the "
            f"attention falls on the lamp, which holds {100 * lamp['uniform']:.1f}% of the keys: "
            f"{lamp['ratio']:.1f}x uniform"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--output", help="also write the result as JSON here")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    apply_debug(args)
    import nonlocal_det  # noqa: F401  (registers the models and datasets)

    result = measure(load_config(args), args.max_images, args.random_weights)
    print(report(result))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    exit_on_user_error(main)
