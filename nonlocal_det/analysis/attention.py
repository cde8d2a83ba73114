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

import math
from typing import Dict, List, Optional

import torch

__all__ = ["query_specificity", "query_maps", "cue_mass", "BlockInputs", "attention_blocks"]


def attention_blocks(module) -> Dict[str, torch.nn.Module]:
    """
    {name: block} of every ``NonLocalBlock2d`` in ``module``, in order. ConfigError for CGNL
    blocks, which have no per-query map to show or measure, and when there is no block.
    """
    from ..errors import ConfigError
    from ..layers import CGNLBlock2d, NonLocalBlock2d

    if any(isinstance(m, CGNLBlock2d) for m in module.modules()):
        raise ConfigError(
            "the model's blocks are CGNL blocks (MODEL.NONLOCAL.BLOCK 'CGNL'), which have no "
            "per-query attention map: their kernel couples every (position, channel) element of a "
            "channel group (Yue et al., sec. 3.3), computed as one compact sum per group"
        )
    blocks = {n: m for n, m in module.named_modules() if isinstance(m, NonLocalBlock2d)}
    if not blocks:
        raise ConfigError(
            "the model has no non-local block: set MODEL.BACKBONE.NAME 'build_nonlocal_backbone' "
            "or MODEL.ROI_KEYPOINT_HEAD.NAME 'KRCNNConvDeconvUpsampleNLHead'"
        )
    return blocks


def query_maps(block, x: torch.Tensor, valid_size=None) -> torch.Tensor:
    """
    Every valid query position's attention over the valid keys, as distributions.

    Args:
        block: a ``NonLocalBlock2d``.
        x: (1, C, H, W), the block's input for one image (or one RoI).
        valid_size: (h, w) of the image's valid region on this grid (None: the whole grid); the
            maps are those of the block computed on that region, as MODEL.NONLOCAL.MASK_PADDING
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


class BlockInputs:
    """
    Records the inputs of chosen non-local blocks during a model call, with the valid size each
    was given (``valid_sizes`` of MODEL.NONLOCAL.MASK_PADDING; None for the whole map).

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
