"""
The global context block of Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation
Networks and Beyond" (2019), sec. 4: one query-independent attention map per image.
"""

import torch
from torch import nn

from .aggregation import compute_dtype
from .residual import (
    NotScriptable,
    apply_in_wider_dtype,
    check_feature_map,
    check_queries,
    conv1x1,
    fields_repr,
    init_residual_branch,
    logits_conv1x1,
)
from .valid_region import valid_groups, valid_mask

__all__ = ["GlobalContextBlock2d", "GC_POOLINGS", "GC_FUSIONS"]

GC_POOLINGS = ("att", "avg")
GC_FUSIONS = ("channel_add", "channel_mul")


class GlobalContextBlock2d(NotScriptable, nn.Module):
    """
    z_i = x_i * sigmoid(T_mul(c)) + T_add(c), with one context vector per image

        c = sum_j a_j x_j,   a = softmax_j(W_k x_j)  ("att")   or   a_j = 1 / N  ("avg"),

    and T = W_v2 ReLU(LN(W_v1 .)) a bottleneck transform to ``int(C * ratio)`` channels and
    back (eq. 3 of the paper; ``fusions`` chooses the add and/or mul terms, a missing term is
    0 or 1). The attention weights do not depend on the query i: the block's attention map is
    the same for every position.

    Initialisation (mmcv's ``ContextBlock``'s convention): the last conv of each transform is
    zero with ``init="identity"``, so with ``"channel_add"`` alone the block starts as exactly
    the identity; with ``"channel_mul"`` it starts as x * sigmoid(0) = x / 2, as in mmcv.
    ``"small"`` / ``"standard"``: that conv at 0.1x / 1x its MSRA init; GC has no norm after
    it, so what ``residual.INIT_ADVICE`` says of a block without a norm applies.

    Pooling and the transforms run in float32 (or float64 for float64 inputs) with autocast
    disabled. Submodule names are mmcv's (``conv_mask``, ``channel_add_conv``,
    ``channel_mul_conv``), so its checkpoints' block weights load under the block's name as
    they are.

    Args:
        in_channels: C.
        ratio: bottleneck width = int(C * ratio) >= 1 (GCNet: 1/16).
        pooling: "att" (attention pooling) or "avg" (global average pooling).
        fusions: a non-empty subset of ``GC_FUSIONS``.
        init: "identity", "small" or "standard".
    """

    # GCNet pools over every position: there is no sub-sampled key grid.
    sub_sample = False

    def __init__(
        self,
        in_channels: int,
        *,
        ratio: float = 1 / 16,
        pooling: str = "att",
        fusions=("channel_add",),
        init: str = "identity",
    ):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if pooling not in GC_POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {GC_POOLINGS}")
        fusions = tuple(fusions) if isinstance(fusions, (list, tuple)) else (fusions,)
        known = all(f in GC_FUSIONS for f in fusions)
        if not fusions or not known or len(set(fusions)) < len(fusions):
            raise ValueError(f"fusions={fusions!r} must be a non-empty subset of {GC_FUSIONS}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
            raise ValueError(f"ratio must be a number > 0, got {ratio!r}")
        planes = int(in_channels * ratio)
        if planes < 1:
            raise ValueError(
                f"ratio={ratio} leaves int({in_channels} * {ratio}) = 0 bottleneck channels; "
                f"use a ratio of at least 1/{in_channels}"
            )
        self.in_channels = in_channels
        self.planes = planes
        self.ratio = float(ratio)
        self.pooling = pooling
        self.fusions = fusions
        if pooling == "att":
            self.conv_mask = logits_conv1x1(in_channels)
        self.channel_add_conv = self._transform(init) if "channel_add" in fusions else None
        self.channel_mul_conv = self._transform(init) if "channel_mul" in fusions else None

    def _transform(self, init: str) -> nn.Sequential:
        """W_v2 ReLU(LN(W_v1 c)), 1x1 convs C -> planes -> C; the last (built first) as ``init``."""
        last = conv1x1(self.planes, self.in_channels, bias=True)
        init_residual_branch(last, None, init)
        return nn.Sequential(
            conv1x1(self.in_channels, self.planes, bias=True),
            nn.LayerNorm([self.planes, 1, 1]),
            nn.ReLU(inplace=True),
            last,
        )

    def extra_repr(self) -> str:
        return fields_repr(self, "in_channels planes pooling fusions")

    def pooling_weights(self, x: torch.Tensor) -> torch.Tensor:
        """a: (B, C, H, W) -> (B, H * W), each row summing to 1, in float32 or wider."""
        dtype = compute_dtype(x)
        batch, _, height, width = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.pooling == "avg":
                return x.new_full((batch, height * width), 1.0 / (height * width), dtype=dtype)
            logits = apply_in_wider_dtype(self.conv_mask, x.to(dtype))  # (B, 1, H, W)
            return torch.softmax(logits.flatten(1).to(dtype), dim=1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """c: (B, C, H, W) -> (B, C, 1, 1), in float32 or wider."""
        weights = self.pooling_weights(x)  # (B, N)
        with torch.autocast(device_type=x.device.type, enabled=False):
            pooled = torch.matmul(x.flatten(2).to(weights.dtype), weights[:, :, None])  # (B, C, 1)
        return pooled[:, :, :, None]

    def fusion_terms(self, context: torch.Tensor):
        """(mul, add): (B, C, 1, 1) each, or None for a fusion not used."""
        with torch.autocast(device_type=context.device.type, enabled=False):
            mul = add = None
            if self.channel_mul_conv is not None:
                mul = torch.sigmoid(apply_in_wider_dtype(self.channel_mul_conv, context))
            if self.channel_add_conv is not None:
                add = apply_in_wider_dtype(self.channel_add_conv, context)
        return mul, add

    def forward(self, x: torch.Tensor, valid_sizes=None) -> torch.Tensor:
        """
        x (B, C, H, W) -> (B, C, H, W) in x's dtype. With ``valid_sizes`` (as for
        ``ResidualBlock2d.forward``) each image's context is pooled over its valid positions only
        and padded positions pass x through (each image as the block computes its valid crop).
        """
        check_feature_map(x, self.in_channels, type(self).__name__)
        groups = valid_groups(valid_sizes, x, type(self).__name__)
        if groups is None:
            context = self.context(x)  # (B, C, 1, 1)
        else:
            context = x.new_zeros(x.shape[:2] + (1, 1), dtype=compute_dtype(x))
            for index, h, w in groups:
                context[index] = self.context(x[index, :, :h, :w])
        mul, add = self.fusion_terms(context)
        out = x if mul is None else x * mul.to(x.dtype)
        if add is not None:
            out = out + add.to(x.dtype)
        if groups is not None:
            out = torch.where(valid_mask(groups, x), out, x)
        return out

    @torch.no_grad()
    def attention_for_queries(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """
        The pooling weights a_j, the same for every query: (B, Q, H, W) for ``queries`` (Q, 2)
        (row, col) positions in x; each map sums to 1.
        """
        queries = check_queries(queries, x, type(self).__name__, self.in_channels)
        weights = self.pooling_weights(x).reshape(x.shape[0], 1, *x.shape[-2:])
        return weights.expand(-1, len(queries), -1, -1)
