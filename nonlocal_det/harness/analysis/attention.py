"""
What a non-local block attends to, measured over a dataset (docs/ablation.md): how much the maps
of different queries differ (``query_specificity``), and the share of the queries' attention on
given key cells, the lamps of the generated tasks (``cue_mass``, ``partner_mass``). Maps come from
``attention_for_queries``; a dot-product or concatenation map is its weights' absolute values
normalised to sum 1 (its weights are not a distribution).
"""

import json
import math
import os
from collections import Counter
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn


def stride_in_backbone(backbone: nn.Module, module: nn.Module) -> int:
    """The input-image stride of the grid ``module`` computes on: a residual block of
    ``backbone``'s ResNet or a module inside one (an attached non-local or GC block)."""
    from nonlocal_det.modeling.backbone import block_strides, find_resnet

    for block, stride in block_strides(find_resnet(backbone)).items():
        if any(m is module for m in block.modules()):
            return stride
    raise ValueError(f"{type(module).__name__} is not inside a residual block of this backbone")


def attention_blocks(module) -> Dict[str, torch.nn.Module]:
    """{name: block}, in order, of every block of ``module`` with per-query attention maps: NL, DNL
    (``NonLocalBlock2d`` and its subclass) and GC (the same map for every query). ConfigError for
    CGNL blocks, which have no per-query map, and when there is no block."""
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
    """Every valid query position's attention over the valid keys: (Q, M), Q = h * w queries, rows
    summing to 1. ``block``: a ``NonLocalBlock2d`` (or subclass) or ``GlobalContextBlock2d``; ``x``:
    (1, C, H, W), its input for one image (or one RoI); ``valid_size``: (h, w) of the image's valid
    region on this grid (None: the whole grid), the maps being those of the block on that region, as
    MODEL.NONLOCAL.VALID_REGION computes them."""
    if valid_size is not None:
        x = x[..., : valid_size[0], : valid_size[1]]
    height, width = x.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    queries = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    weights = block.attention_for_queries(x, queries)[0].flatten(1).double().abs()  # (Q, M)
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-300)


def _entropy_bits(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log2(p.clamp_min(1e-300))).sum(dim=-1)


def query_specificity(maps: torch.Tensor, chunk: int = 64) -> float:
    """Mean Jensen-Shannon divergence (bits, in [0, 1]) over all pairs of rows of ``maps`` (Q, M),
    each a distribution over the same keys: 0 for identical rows, 1 for rows with disjoint support,
    NaN with fewer than 2 rows."""
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
    """How much of each shape's attention falls on its own partner lamp, against the other lamps,
    and against what the same lamp gets from the other shapes. ``maps``: (Q, M) of one image;
    ``pairs``: [(query rows of one shape, its partner's key cells (M,) bool, the other lamps' key
    cells (M,) bool)], one per pair. Returns sums over the shapes' queries (``pooled`` makes them
    shares): "partner" and "others", the mass on the own partner's and on the other lamps' cells,
    their "_uniform" counterparts, "queries"; and per shape "own" / "from_others", the mass its lamp
    gets from its own shape's queries and from the other shapes' queries."""
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
    """``partner_mass`` sums of several images as shares of the queries' attention (NaN without
    queries), and the ratio own / from_others: 1 when attention does not depend on the query (a GC
    block's, exactly, by construction), above 1 when a shape picks out its partner."""
    totals = Counter()
    for result in results:
        totals.update({k: v for k, v in result.items() if k != "other_lamps"})
    count = totals["queries"]
    shares = ("partner", "others", "partner_uniform", "others_uniform")
    shares = {k: totals[k] / count if count else float("nan") for k in shares}
    own, rest = totals["own"], totals["from_others"]
    ratio = own / rest if rest else (math.inf if own else math.nan)
    lamps = max((r["other_lamps"] for r in results), default=0)
    return {**shares, "ratio": ratio, "queries": count, "other_lamps": lamps}


class BlockInputs:
    """
    Records the inputs of chosen blocks during a model call, with the valid size each was given
    (``valid_sizes`` of MODEL.NONLOCAL.VALID_REGION; None for the whole map).

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


# The long-range task's gap between a shape and its lamp (data/long_range.py MIN_GAP), in the
# dataset's pixels: keys this far from a query are beyond the baseline's receptive field.
FAR_PX = 256


def _add_lamp_sums(totals: Counter, maps, queries, cue, grid, stride, key_cell, far_px) -> None:
    """Adds the sums over the shape ``queries`` (Q, 2) of one map to ``totals``: their attention on
    the ``cue`` key cells (Hk, Wk) and on the key cells whose centre is at least ``far_px`` from the
    query's, and the uniform shares of both."""
    flat = torch.as_tensor(queries[:, 0] * grid[1] + queries[:, 1])
    lamp = cue_mass(maps[flat], torch.as_tensor(cue))
    key_x = (torch.arange(cue.shape[1]) + 0.5) * stride * key_cell  # (Wk,)
    query_x = (torch.as_tensor(queries[:, 1]) + 0.5) * stride  # (Q,)
    far = (key_x[None, :] - query_x[:, None]).abs() >= far_px  # (Q, Wk)
    far = far[:, None, :].expand(-1, cue.shape[0], -1).reshape(len(queries), -1)  # (Q, Hk * Wk)
    totals["mass"] += lamp["mass"] * len(flat)
    totals["uniform"] += lamp["uniform"] * len(flat)
    totals["far_mass"] += (maps[flat] * far).sum().item()
    totals["far_uniform"] += far.double().mean(dim=1).sum().item()
    totals["queries"] += len(flat)


def _lamp_measures(block: str, sums) -> dict:
    """A backbone block's lamp measures from its ``_add_lamp_sums`` totals, per shape query."""
    n = sums["queries"]
    mass, uniform = sums["mass"] / n, sums["uniform"] / n
    lamp = {"block": block, "queries": n, "mass": mass, "uniform": uniform, "ratio": mass / uniform}
    return {**lamp, "far_mass": sums["far_mass"] / n, "far_uniform": sums["far_uniform"] / n}


def _partner_measure(maps, cells, grid):
    """``partner_mass`` of one image of the pairs task from each pair's (queries, cue) cells."""
    lamps = [cue for _, cue in cells]
    pairs = [
        (queries[:, 0] * grid[1] + queries[:, 1], cue, np.any(lamps[:i] + lamps[i + 1 :], axis=0))
        for i, (queries, cue) in enumerate(cells)
    ]
    return partner_mass(maps, pairs)


# Query specificity compares every pair of query maps (Q^2 M work): above this many queries, an
# evenly spaced subset of them (every k-th, in raster order) is compared.
SPECIFICITY_QUERIES = 256


def _shapes(record, entry, scale):
    """[(lamp box, shape boxes)] of a generated task's image, in the network's input pixels: one per
    pair of the pairs task, or the long-range task's lamp and the ground-truth boxes that do not
    overlap it; [] for other datasets."""
    from detectron2.structures import BoxMode

    if entry.get("pairs"):
        shapes = [(p["lamp_box"], [p["shape_box"]]) for p in entry["pairs"]]
    elif entry.get("lamp_box"):
        lamp = entry["lamp_box"]
        x0, y0, x1, y1 = lamp
        annotations = record.get("annotations", [])
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        boxes = [b for b in boxes if not (b[0] < x1 and x0 < b[2] and b[1] < y1 and y0 < b[3])]
        shapes = [(lamp, boxes)] if boxes else []
    else:
        shapes = []
    return [(np.array(b) * scale, np.array(s) * scale) for b, s in shapes]


def measure_attention(cfg, max_images=None, random_ok=False):
    """Over the config's first test set: {"images", "blocks": {name: {"specificity",
    "specificity_at_init", "maps"}}, "lamp": the first backbone block's lamp measures or None,
    "lamp_by_block" and "partner_by_block": {name: ...} for every backbone block}."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image
    from detectron2.modeling import build_model

    from ..checkpoint import build_trained_model

    dataset = cfg.DATASETS.TEST[0]
    json_file = MetadataCatalog.get(dataset).get("json_file", None)
    entries = {}  # {file name: image entry}; the generated tasks' entries hold lamp_box or pairs
    if json_file:
        with open(json_file) as f:
            entries = {im["file_name"]: im for im in json.load(f)["images"]}
    torch.manual_seed(0)
    at_init = attention_blocks(build_model(cfg).eval())
    model = build_trained_model(cfg, random_ok)
    blocks = attention_blocks(model)
    in_backbone = {n: b for n, b in blocks.items() if n.startswith("backbone.")}
    strides = {n: stride_in_backbone(model.backbone, b) for n, b in in_backbone.items()}
    scores = {n: ([], []) for n in blocks}  # per block: specificity per map, trained and at init
    lamp_sums = {n: Counter() for n in strides}
    partners = {n: [] for n in strides}  # per block: per image, partner_mass's result
    records = DatasetCatalog.get(dataset)[:max_images]
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    for record in records:
        image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        resized = aug.get_transform(image).apply_image(image)
        with torch.no_grad(), BlockInputs(blocks) as inputs:
            model([{"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))}])
        scale = resized.shape[0] / image.shape[0]
        entry = entries.get(os.path.basename(record["file_name"])) or {}
        shapes = _shapes(record, entry, scale)
        for name, calls in inputs.items():
            for x, valid_sizes in calls:
                for i in range(x.shape[0]):  # the image, or each person RoI of the head
                    size = valid_sizes[i] if valid_sizes is not None else None
                    with torch.no_grad():
                        maps = query_maps(blocks[name], x[i : i + 1], size)
                        maps_init = query_maps(at_init[name], x[i : i + 1], size)
                    for found, m in zip(scores[name], (maps, maps_init)):
                        step = -(-m.shape[0] // SPECIFICITY_QUERIES)
                        found.append(query_specificity(m[::step]))
                    if name not in strides or not shapes:
                        continue
                    grid = tuple(size) if size is not None else tuple(x.shape[-2:])
                    key_cell = 2 if blocks[name].sub_sample else 1
                    cells = [cue_and_query_cells(*s, grid, strides[name], key_cell) for s in shapes]
                    if entry.get("pairs"):
                        partners[name].append(_partner_measure(maps, cells, grid))
                    elif len(cells[0][0]):
                        args = (*cells[0], grid, strides[name], key_cell, FAR_PX * scale)
                        _add_lamp_sums(lamp_sums[name], maps, *args)
    by_block = {n: _lamp_measures(n, s) for n, s in lamp_sums.items() if s["queries"]}
    return {
        "images": len(records),
        "blocks": {
            n: {"specificity": mean(t), "specificity_at_init": mean(i), "maps": len(t)}
            for n, (t, i) in scores.items()  # trained, at init
        },
        "lamp": next(iter(by_block.values()), None),
        "lamp_by_block": by_block,
        "partner_by_block": {n: pooled(results) for n, results in partners.items() if results},
    }


def attention_report(result) -> str:
    lines = [f"over {result['images']} images of the test set:"]
    for name, r in result["blocks"].items():
        lines.append(
            f"  {name}: query specificity {r['specificity']:.3f} (at initialisation "
            f"{r['specificity_at_init']:.3f}; uniform attention 0, disjoint 1; {r['maps']} maps)"
        )
    for lamp in filter(None, (result.get("lamp_by_block") or {"": result["lamp"]}).values()):
        lines.append(
            f"  {lamp['block']}: over {lamp['queries']} shape queries, {100 * lamp['mass']:.1f}% "
            f"of the attention falls on the lamp, which holds {100 * lamp['uniform']:.1f}% of the "
            f"keys: {lamp['ratio']:.1f}x uniform; {100 * lamp['far_mass']:.1f}% falls on keys at "
            f"least {FAR_PX} px away (uniform: {100 * lamp['far_uniform']:.1f}%)"
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
