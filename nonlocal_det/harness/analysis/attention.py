"""
What a non-local block attends to, measured over a dataset.

- ``query_specificity``: how much the attention maps of different queries differ, as the mean
  Jensen-Shannon divergence (bits) between pairs of query maps: 0 when every query attends to
  the keys alike (uniform attention, or the query-independent maps GCNet (Cao et al., 2019) found
  in non-local blocks trained on COCO), 1 when any two queries attend to disjoint keys.
- ``cue_mass``: the share of the queries' attention that falls on given key cells (the lamp of
  the long-range task), against the share those cells would get under uniform attention.

Maps come from ``NonLocalBlock2d.attention_for_queries`` (only the queries' rows are built). For
the dot-product and concatenation modes, whose weights are not a distribution (dot products can
be negative), a query's map is its weights' absolute values normalised to sum 1.
"""

import json
import math
import os
from collections import Counter
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

__all__ = [
    "query_specificity",
    "query_maps",
    "cue_mass",
    "partner_mass",
    "pooled",
    "BlockInputs",
    "attention_blocks",
    "stride_in_backbone",
    "cue_and_query_cells",
    "measure_attention",
    "attention_report",
]


def stride_in_backbone(backbone: nn.Module, module: nn.Module) -> int:
    """
    The stride on the input image of the grid ``module`` computes on: a residual block of
    ``backbone``'s ResNet or a module inside one (an attached non-local or GC block).
    """
    from nonlocal_det.modeling.backbone import block_strides, find_resnet

    for block, stride in block_strides(find_resnet(backbone)).items():
        if any(m is module for m in block.modules()):
            return stride
    raise ValueError(f"{type(module).__name__} is not inside a residual block of this backbone")


def attention_blocks(module) -> Dict[str, torch.nn.Module]:
    """
    {name: block} of every block with per-query attention maps in ``module`` (NL and DNL,
    ``NonLocalBlock2d`` and its subclass, and GC, whose map is the same for every query), in
    order. ConfigError for CGNL blocks, which have no per-query map to show or measure, and when
    there is no block.
    """
    from nonlocal_det.errors import ConfigError
    from nonlocal_det.layers import CGNLBlock2d, GlobalContextBlock2d, NonLocalBlock2d

    if any(isinstance(m, CGNLBlock2d) for m in module.modules()):
        raise ConfigError(
            "the model's blocks are CGNL blocks (MODEL.NONLOCAL.BLOCK 'CGNL'), which have no "
            "per-query attention map: their kernel couples every (position, channel) element of a "
            "channel group (Yue et al., sec. 3.3), computed as one compact sum per group"
        )
    kinds = (NonLocalBlock2d, GlobalContextBlock2d)
    blocks = {n: m for n, m in module.named_modules() if isinstance(m, kinds)}
    if not blocks:
        raise ConfigError(
            "the model has no block of the non-local family: set MODEL.BACKBONE.NAME "
            "'build_nonlocal_backbone' or MODEL.ROI_KEYPOINT_HEAD.NAME "
            "'KRCNNConvDeconvUpsampleNLHead'"
        )
    return blocks


def query_maps(block, x: torch.Tensor, valid_size=None) -> torch.Tensor:
    """
    Every valid query position's attention over the valid keys, as distributions.

    Args:
        block: a ``NonLocalBlock2d`` (or subclass) or ``GlobalContextBlock2d``.
        x: (1, C, H, W), the block's input for one image (or one RoI).
        valid_size: (h, w) of the image's valid region on this grid (None: the whole grid); the
            maps are those of the block computed on that region, as MODEL.NONLOCAL.VALID_REGION
            computes them.
    Returns:
        (Q, M) with Q = h * w queries, rows summing to 1.
    """
    if valid_size is not None:
        x = x[..., : valid_size[0], : valid_size[1]]
    height, width = x.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    queries = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    weights = block.attention_for_queries(x, queries)[0].flatten(1).double()  # (Q, M)
    weights = weights.abs()
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-300)


def _entropy_bits(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log2(p.clamp_min(1e-300))).sum(dim=-1)


def query_specificity(maps: torch.Tensor, chunk: int = 64) -> float:
    """
    Mean Jensen-Shannon divergence (bits, in [0, 1]) over all pairs of rows of ``maps`` (Q, M),
    each a distribution over the same keys. 0 for identical rows; 1 for rows with disjoint
    support. NaN with fewer than 2 rows.
    """
    num = maps.shape[0]
    if num < 2:
        return float("nan")
    maps = maps.double()
    own = _entropy_bits(maps)  # (Q,)
    total = 0.0
    for start in range(0, num, chunk):
        block = maps[start : start + chunk]  # (c, M)
        mixture = 0.5 * (block[:, None, :] + maps[None, :, :])  # (c, Q, M)
        js = _entropy_bits(mixture) - 0.5 * (own[start : start + chunk, None] + own[None, :])
        total += js.clamp_min(0).sum().item()
    return total / (num * (num - 1))  # the diagonal is 0; each pair counted twice


def cue_mass(maps: torch.Tensor, cue: torch.Tensor) -> Dict[str, float]:
    """Mean share of the queries' attention on the ``cue`` keys (M,) bool, and the uniform share."""
    mass = maps[:, cue.flatten()].sum(dim=1).mean().item()
    return {"mass": mass, "uniform": cue.float().mean().item()}


def partner_mass(maps: torch.Tensor, pairs) -> Dict[str, float]:
    """
    How much of each shape's attention falls on its own partner lamp, against the other lamps,
    and against what the same lamp gets from the other shapes.

    Args:
        maps: (Q, M) query maps of one image, rows summing to 1.
        pairs: [(query rows of one shape, its partner's key cells (M,) bool, the other lamps'
            key cells (M,) bool)], one per pair of the image.
    Returns:
        sums over the shapes' queries (divide by "queries" for means): "partner", the mass on
        the own partner's cells; "others", on the other lamps' cells; their uniform
        counterparts; and "own" / "from_others", the mass each lamp gets from its own shape's
        queries and from the other shapes' queries, per shape. ``pooled`` turns them into
        shares and the ratio own / from_others: 1 when attention does not depend on the query
        (a GC block's, exactly, by construction), above 1 when a shape picks out its partner.
    """
    totals, rows_of = Counter(), [torch.as_tensor(rows, dtype=torch.long) for rows, _, _ in pairs]
    for i, (rows, (_, partner, others)) in enumerate(zip(rows_of, pairs)):
        partner, others = torch.as_tensor(partner).flatten(), torch.as_tensor(others).flatten()
        rest = torch.cat([r for j, r in enumerate(rows_of) if j != i] or [rows[:0]])
        if not len(rows) or not len(rest):
            continue
        totals["partner"] += maps[rows][:, partner].sum().item()
        totals["others"] += maps[rows][:, others].sum().item()
        totals["partner_uniform"] += len(rows) * partner.double().mean().item()
        totals["others_uniform"] += len(rows) * others.double().mean().item()
        totals["own"] += maps[rows][:, partner].sum(dim=1).mean().item()
        totals["from_others"] += maps[rest][:, partner].sum(dim=1).mean().item()
        totals["queries"] += len(rows)
    totals["other_lamps"] = len(pairs) - 1
    return dict(totals)


def pooled(results) -> Dict[str, float]:
    """``partner_mass`` sums of several images as shares of the queries' attention, and the
    ratio own / from_others (NaN without queries)."""
    totals = Counter()
    for result in results:
        totals.update({k: v for k, v in result.items() if k != "other_lamps"})
    count = totals["queries"]
    shares = {k: totals[k] / count if count else float("nan") for k in _SHARES}
    own, rest = totals["own"], totals["from_others"]
    ratio = own / rest if rest else (math.inf if own else math.nan)
    lamps = max((r["other_lamps"] for r in results), default=0)
    return {**shares, "ratio": ratio, "queries": count, "other_lamps": lamps}


_SHARES = ("partner", "others", "partner_uniform", "others_uniform")


class BlockInputs:
    """
    Records the inputs of chosen non-local blocks during a model call, with the valid size each
    was given (``valid_sizes`` of MODEL.NONLOCAL.VALID_REGION; None for the whole map).

        with BlockInputs({"res4": block}) as inputs:
            model(batch)
        x, valid_size = inputs["res4"][0]   # per call: (B, C, H, W), [(h, w)] * B or None
    """

    def __init__(self, blocks: Dict[str, torch.nn.Module]):
        self.blocks = blocks
        self.records: Dict[str, List] = {name: [] for name in blocks}
        self.handles = []

    def __enter__(self):
        for name, block in self.blocks.items():

            def record(module, args, kwargs, name=name):
                self.records[name].append((args[0].detach(), kwargs.get("valid_sizes")))

            self.handles.append(block.register_forward_pre_hook(record, with_kwargs=True))
        return self.records

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def mean(values: List[float]) -> Optional[float]:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else None


# The long-range task's gap between a shape and its lamp (data/long_range.py MIN_GAP), in the
# dataset's pixels: keys this far from a query are beyond the baseline's receptive field.
FAR_PX = 256


def _far_keys(queries, key_shape, stride: float, key_cell: int, far_px: float) -> torch.Tensor:
    """(Q, Hk * Wk) bool: the key cells whose centre is at least ``far_px`` from the query's."""
    key_h, key_w = key_shape
    key_x = (torch.arange(key_w) + 0.5) * stride * key_cell  # (Wk,)
    query_x = (torch.as_tensor(queries[:, 1]) + 0.5) * stride  # (Q,)
    far = (key_x[None, :] - query_x[:, None]).abs() >= far_px  # (Q, Wk)
    return far[:, None, :].expand(-1, key_h, -1).reshape(len(queries), -1)


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


def _image_fields(dataset: str, field: str):
    """{file name: the field of its image entry} of a generated task (lamp_box, pairs), or None."""
    from detectron2.data import MetadataCatalog

    json_file = MetadataCatalog.get(dataset).get("json_file", None)
    if not json_file:
        return None
    with open(json_file) as f:
        found = {im["file_name"]: im.get(field) for im in json.load(f)["images"]}
    return found if any(found.values()) else None


class _LampTotals:
    """Sums over the shape queries of one backbone block, for the lamp mass and far mass."""

    def __init__(self):
        self.queries = 0
        self.mass = self.uniform = self.far_mass = self.far_uniform = 0.0

    def add(self, maps, queries, grid, cue, stride, key_cell, far_px):
        flat = torch.as_tensor(queries[:, 0] * grid[1] + queries[:, 1])
        result = cue_mass(maps[flat], torch.as_tensor(cue))
        self.mass += result["mass"] * len(flat)
        self.uniform += result["uniform"] * len(flat)
        far = _far_keys(queries, cue.shape, stride, key_cell, far_px)
        self.far_mass += (maps[flat] * far).sum().item()
        self.far_uniform += far.double().mean(dim=1).sum().item()
        self.queries += len(flat)

    def result(self, block: str) -> Optional[dict]:
        if not self.queries:
            return None
        mass, uniform = self.mass / self.queries, self.uniform / self.queries
        return {
            "block": block,
            "queries": self.queries,
            "mass": mass,
            "uniform": uniform,
            "ratio": mass / uniform,
            "far_mass": self.far_mass / self.queries,
            "far_uniform": self.far_uniform / self.queries,
        }


# Query specificity compares every pair of query maps (Q^2 M work): above this many queries, an
# evenly spaced subset of them (every k-th, in raster order) is compared.
SPECIFICITY_QUERIES = 256


def _spread(maps: torch.Tensor) -> torch.Tensor:
    """At most SPECIFICITY_QUERIES rows of ``maps`` (Q, M), evenly spaced."""
    step = -(-maps.shape[0] // SPECIFICITY_QUERIES)
    return maps[::step]


def _shape_boxes(record, lamp):
    """The record's ground-truth boxes (XYXY) that do not overlap the lamp's box."""
    from detectron2.structures import BoxMode

    boxes = [
        BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
        for a in record.get("annotations", [])
    ]
    return [b for b in boxes if not _overlaps(b, lamp)]


def _block_inputs(model, blocks, record, cfg):
    """(the block inputs of one model call on ``record``'s image, input scale, image shape)."""
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image

    image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    resized = aug.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    with torch.no_grad(), BlockInputs(blocks) as inputs:
        model([{"image": tensor}])
    return inputs, resized.shape[0] / image.shape[0]


def measure_attention(cfg, max_images=None, random_ok=False):
    """
    {"images", "blocks": {name: {"specificity", "specificity_at_init", "maps"}}, "lamp": the
    first backbone block's lamp measures or None, "lamp_by_block": {name: ...} for every backbone
    block} over the config's first test set.
    """
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from ..checkpoint import build_trained_model

    dataset = cfg.DATASETS.TEST[0]
    lamps, task_pairs = _image_fields(dataset, "lamp_box"), _image_fields(dataset, "pairs")
    torch.manual_seed(0)
    at_init = attention_blocks(build_model(cfg).eval())
    model = build_trained_model(cfg, random_ok)
    blocks = attention_blocks(model)
    strides = {
        n: stride_in_backbone(model.backbone, b)
        for n, b in blocks.items()
        if n.startswith("backbone.")
    }
    scores = {n: {"trained": [], "init": []} for n in blocks}
    totals = {n: _LampTotals() for n in strides}
    partners = {n: [] for n in strides}  # per block: per image, partner_mass's result
    records = DatasetCatalog.get(dataset)[:max_images]
    for record in records:
        inputs, scale = _block_inputs(model, blocks, record, cfg)
        lamp = lamps.get(os.path.basename(record["file_name"])) if lamps else None
        pairs = task_pairs.get(os.path.basename(record["file_name"])) if task_pairs else None
        boxes = _shape_boxes(record, lamp) if lamp else []
        for name, calls in inputs.items():
            for x, valid_sizes in calls:
                for i in range(x.shape[0]):  # the image, or each person RoI of the head
                    size = valid_sizes[i] if valid_sizes is not None else None
                    with torch.no_grad():
                        maps = query_maps(blocks[name], x[i : i + 1], size)
                        maps_init = query_maps(at_init[name], x[i : i + 1], size)
                    scores[name]["trained"].append(query_specificity(_spread(maps)))
                    scores[name]["init"].append(query_specificity(_spread(maps_init)))
                    if name not in strides or not (boxes or pairs):
                        continue
                    grid = tuple(size) if size is not None else tuple(x.shape[-2:])
                    key_cell = 2 if blocks[name].sub_sample else 1
                    if pairs:
                        partners[name].append(
                            _partner_measure(maps, pairs, scale, grid, strides[name], key_cell)
                        )
                        continue
                    queries, cue = cue_and_query_cells(
                        np.array(lamp) * scale,
                        np.array(boxes) * scale,
                        grid,
                        strides[name],
                        key_cell,
                    )
                    if len(queries):
                        totals[name].add(
                            maps, queries, grid, cue, strides[name], key_cell, FAR_PX * scale
                        )
    by_block = {n: t.result(n) for n, t in totals.items() if t.queries}
    partner_by_block = {n: pooled(results) for n, results in partners.items() if results}
    return {
        "images": len(records),
        "blocks": {
            name: {
                "specificity": mean(s["trained"]),
                "specificity_at_init": mean(s["init"]),
                "maps": len(s["trained"]),
            }
            for name, s in scores.items()
        },
        "lamp": next(iter(by_block.values()), None),
        "lamp_by_block": by_block,
        "partner_by_block": partner_by_block,
    }


def _partner_measure(maps, pairs, scale, grid, stride, key_cell):
    """``partner_mass`` of one image of the pairs task on one block's grid."""
    cells = []
    for pair in pairs:
        queries, cue = cue_and_query_cells(
            np.array(pair["lamp_box"]) * scale,
            np.array([pair["shape_box"]]) * scale,
            grid,
            stride,
            key_cell,
        )
        cells.append((queries[:, 0] * grid[1] + queries[:, 1], cue))
    lamps = [cue for _, cue in cells]
    return partner_mass(
        maps,
        [
            (rows, cue, np.any([c for j, c in enumerate(lamps) if j != i], axis=0))
            for i, (rows, cue) in enumerate(cells)
        ],
    )


def attention_report(result) -> str:
    lines = [f"over {result['images']} images of the test set:"]
    for name, r in result["blocks"].items():
        lines.append(
            f"  {name}: query specificity {r['specificity']:.3f} (at initialisation "
            f"{r['specificity_at_init']:.3f}; uniform attention 0, disjoint 1; {r['maps']} maps)"
        )
    for lamp in (result.get("lamp_by_block") or {"": result["lamp"]}).values():
        if not lamp:
            continue
        lines.append(
            f"  {lamp['block']}: over {lamp['queries']} shape queries, {100 * lamp['mass']:.1f}% "
            "of the "
            f"attention falls on the lamp, which holds {100 * lamp['uniform']:.1f}% of the keys: "
            f"{lamp['ratio']:.1f}x uniform; {100 * lamp['far_mass']:.1f}% falls on keys at least "
            f"{FAR_PX} px away (uniform: {100 * lamp['far_uniform']:.1f}%)"
        )
    for name, p in result.get("partner_by_block", {}).items():
        lines.append(
            f"  {name}: over {p['queries']} shape queries, {100 * p['partner']:.1f}% of the "
            f"attention falls on the shape's own partner lamp (uniform "
            f"{100 * p['partner_uniform']:.1f}%), {100 * p['others']:.1f}% on the other "
            f"{p['other_lamps']} lamps (uniform {100 * p['others_uniform']:.1f}%); a lamp gets "
            f"{p['ratio']:.2f}x from its own shape what it gets from the others"
        )
    return "\n".join(lines)
