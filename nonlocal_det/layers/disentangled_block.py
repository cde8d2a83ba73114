"""
The disentangled non-local block of Yin et al., "Disentangled Non-Local Neural Networks"
(ECCV 2020), sec. 4: a whitened pairwise term plus a unary term.
"""

import torch

from .aggregation import compute_dtype
from .nonlocal_block import NonLocalBlock2d
from .norm import NormSpec
from .residual import fields_repr, logits_conv1x1, pointwise_conv

__all__ = ["DisentangledNonLocal2d"]


class DisentangledNonLocal2d(NonLocalBlock2d):
    """
    z = x + norm(W_z y), with y_i = sum_j [w_p(i, j) + w_u(j)] g_j (eq. 13 of the paper):

    - pairwise term w_p(i, j) = softmax_j(s / T * (theta_i - mu_theta) . (phi_j - mu_phi)),
      theta and phi whitened by their means over the query and key positions, s = 1/sqrt(inner)
      with ``use_scale`` (else 1) and T the ``temperature``;
    - unary term w_u(j) = softmax_j(W_m x_j), W_m a 1x1 conv C -> 1 (``conv_mask``), the same
      for every query.

    ``sub_sample`` max-pools phi, g and the unary logits W_m x. Everything else is
    ``NonLocalBlock2d``'s embedded-Gaussian block: reduction, W_z and its norm, ``init``, valid
    regions of padded batches (the means and the softmaxes then run over each image's valid
    positions), float32 attention, memory linear in H * W. Checkpoint keys: ``theta``, ``phi``,
    ``g``, ``conv_mask``, ``out``, ``norm``.

    Args:
        in_channels: C.
        temperature: T > 0 (the paper and mmsegmentation: 0.05).
        reduction, sub_sample, use_scale, norm, init: as for ``NonLocalBlock2d``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        temperature: float = 0.05,
        reduction: int = 2,
        sub_sample: bool = True,
        use_scale: bool = True,
        norm: NormSpec = "BN",
        init: str = "identity",
    ):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature must be a number, got {temperature!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        super().__init__(
            in_channels,
            mode="embedded_gaussian",
            reduction=reduction,
            sub_sample=sub_sample,
            use_scale=use_scale,
            norm=norm,
            init=init,
        )
        self.temperature = float(temperature)
        self.conv_mask = logits_conv1x1(in_channels)

    def extra_repr(self) -> str:
        return fields_repr(self, "in_channels inner_channels temperature sub_sample use_scale")

    def _logit_scale(self) -> float:
        return super()._logit_scale() / self.temperature

    def embed(self, x: torch.Tensor):
        """
        Whitened queries (B, inner, H, W) and keys (B, inner, Hk, Wk), in float32 or wider, and
        values (B, inner, Hk, Wk).
        """
        queries, keys, values = super().embed(x)
        dtype = compute_dtype(queries, keys)
        with torch.autocast(device_type=x.device.type, enabled=False):
            queries, keys = queries.to(dtype), keys.to(dtype)
            queries = queries - queries.mean(dim=(2, 3), keepdim=True)
            keys = keys - keys.mean(dim=(2, 3), keepdim=True)
        return queries, keys, values

    def unary_weights(self, x: torch.Tensor) -> torch.Tensor:
        """w_u: (B, C, H, W) -> (B, M) over the key grid, rows summing to 1, float32 or wider."""
        dtype = compute_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self._pool(pointwise_conv(self.conv_mask, x.to(dtype)))  # (B, 1, Hk, Wk)
            return torch.softmax(logits.flatten(1), dim=1)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """y: (B, C, H, W) -> (B, inner_channels, H, W), pairwise plus unary, float32 or wider."""
        queries, keys, values = self.embed(x)
        y = self.aggregate(queries, keys, values)  # (B, inner, H, W)
        unary = self.unary_weights(x)  # (B, M)
        with torch.autocast(device_type=x.device.type, enabled=False):
            v = values.flatten(2).to(unary.dtype)  # (B, inner, M)
            y_unary = torch.matmul(v, unary[:, :, None])  # (B, inner, 1)
        return y + y_unary[:, :, :, None].to(y.dtype)

    @torch.no_grad()
    def attention_for_queries(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """
        w_p(i, j) + w_u(j) for the chosen queries: (B, Q, Hk, Wk), each map summing to 2 (the
        pairwise and the unary distributions); see ``NonLocalBlock2d.attention_for_queries``.
        """
        pairwise = super().attention_for_queries(x, queries)
        unary = self.unary_weights(x).reshape(x.shape[0], 1, *pairwise.shape[-2:])
        return pairwise + unary.to(pairwise.dtype)
