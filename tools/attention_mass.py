#!/usr/bin/env python
"""
Where the objects of the long-range task look: the share of a backbone non-local block's
attention that falls on the lamp, against the share the lamp would get under uniform attention.

For every image of a ``nonlocal_longrange`` split, the queries are the block's grid positions
whose centres lie inside the ground-truth box of a shape (not the lamp's own box); the cue keys are the key cells (2x2 pooled cells
with sub-sampling) that overlap the lamp's box. For each query, ``mass`` = the sum of its
normalised weights on the cue keys (``NonLocalBlock2d.attention_for_queries``, which builds
only the queries' rows), ``uniform`` = cue keys / all keys. Reported: mean mass, mean uniform
share, and their ratio (1 for a block that attends uniformly; a block that learned to read the
lamp gives much more), averaged over all queries of all images.

    python tools/attention_mass.py --config-file configs/longrange_NL.yaml \
        MODEL.WEIGHTS output/ablation/longrange_NL/seed0/model_final.pth
"""

import argparse
import json
import os
import sys

import numpy as np
import torch


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


def measure(cfg, block_name=None, max_images=None):
    """{"images", "queries", "mass", "uniform", "ratio", "block"} over the config's first test set."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image
    from detectron2.modeling import build_model
    from detectron2.structures import BoxMode

    from nonlocal_det.layers import NonLocalBlock2d

    dataset = cfg.DATASETS.TEST[0]
    meta = MetadataCatalog.get(dataset)
    with open(meta.json_file) as f:
        lamps = {im["file_name"]: im.get("lamp_box") for im in json.load(f)["images"]}
    if not any(lamps.values()):
        raise ValueError(
            f"{dataset} has no lamp boxes: this tool measures the nonlocal_longrange task"
        )

    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    blocks = [(n, m) for n, m in model.backbone.named_modules() if isinstance(m, NonLocalBlock2d)]
    if block_name:
        blocks = [(n, m) for n, m in blocks if n == block_name]
    if not blocks:
        raise ValueError(
            "the model's backbone has no NonLocalBlock2d"
            + (f" named {block_name!r}" if block_name else "")
        )
    name, block = blocks[0]
    store = {}
    block.register_forward_pre_hook(lambda mod, args: store.__setitem__("x", args[0]))
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    masses, uniforms, used = [], [], 0
    for record in DatasetCatalog.get(dataset)[:max_images]:
        lamp = lamps.get(os.path.basename(record["file_name"]))
        if lamp is None:
            continue
        boxes = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            for a in record.get("annotations", [])
        ]
        boxes = [b for b in boxes if not _overlaps(b, lamp)]  # the shapes, not the lamp's own box
        if not boxes:
            continue
        image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        transform = aug.get_transform(image)
        resized = transform.apply_image(image)
        scale = resized.shape[0] / image.shape[0]
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        with torch.no_grad():
            images = model.preprocess_image([{"image": tensor}])
            model.backbone(images.tensor)
            x = store["x"]
            stride = images.tensor.shape[-2] / x.shape[-2]
            queries, cue = cue_and_query_cells(
                np.array(lamp) * scale,
                np.array(boxes) * scale,
                x.shape[-2:],
                stride,
                2 if block.sub_sample else 1,
            )
            if len(queries) == 0:
                continue
            weights = block.attention_for_queries(x, torch.as_tensor(queries))[0]  # (Q, Hk, Wk)
        cue_t = torch.as_tensor(cue)
        masses.append(weights[:, cue_t].sum(-1).numpy())
        uniforms.append(np.full(len(queries), cue.sum() / cue.size))
        used += 1
    mass, uniform = np.concatenate(masses), np.concatenate(uniforms)
    return {
        "block": name,
        "images": used,
        "queries": int(mass.size),
        "mass": float(mass.mean()),
        "uniform": float(uniform.mean()),
        "ratio": float(mass.mean() / uniform.mean()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument(
        "--block", help="name of the backbone's non-local block (default: the first)"
    )
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--output", help="also write the result as JSON here")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path"
    )
    args = parser.parse_args(argv)

    from nonlocal_det.checks import MissingInputError, check_weights
    from nonlocal_det.config import get_nonlocal_cfg

    cfg = get_nonlocal_cfg(args.config_file, args.opts)
    try:
        check_weights(cfg, resume=False)
        result = measure(cfg, args.block, args.max_images)
    except (MissingInputError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(
        f"{result['block']}: over {result['queries']} object queries in {result['images']} images, "
        f"{100 * result['mass']:.1f}% of the attention falls on the lamp, which holds "
        f"{100 * result['uniform']:.1f}% of the keys: {result['ratio']:.1f}x uniform"
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
