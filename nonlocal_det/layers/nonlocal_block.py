"""The non-local block of Wang et al., "Non-local Neural Networks" (CVPR 2018), sec. 3."""

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .aggregation import (
    compute_dtype,
    concatenation_aggregate,
    dot_product_aggregate,
    softmax_aggregate,
)
from .norm import NormSpec
from .residual import ResidualBlock2d, check_queries, conv1x1, fields_repr, require_divisible

__all__ = ["NonLocalBlock2d", "NONLOCAL_MODES"]

NONLOCAL_MODES = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")


class NonLocalBlock2d(ResidualBlock2d):
    """
    z = x + norm(W_z y), y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j) over key positions j (eqs. 1-6).

    Pairwise functions (``mode``), with theta, phi, g 1x1 convolutions to
    ``in_channels // reduction`` channels and M the number of key positions:

    - ``"gaussian"``: f = exp(x_i . x_j) on x itself (no theta/phi), C(x) = sum_j f (a softmax).
    - ``"embedded_gaussian"``: f = exp(s * theta_i . phi_j), C(x) = sum_j f, with
      s = 1/sqrt(inner channels) if ``use_scale`` else 1 (the paper's formula).
    - ``"dot_product"``: f = theta_i . phi_j, C(x) = M.
    - ``"concatenation"``: f = ReLU(w_f . [theta_i, phi_j]), C(x) = M, with w_f the 1x1
      conv ``concat_project`` (2 * inner -> 1, no bias).

    ``sub_sample`` max-pools the key side 2x2 (phi and g outputs; the input itself as keys in
    gaussian mode) with ``ceil_mode``: an odd last row or column is pooled on its own (a
    1-pixel-wide window) rather than dropped. So M = ceil(H/2) * ceil(W/2), else H * W.

    With ``init="identity"`` (the paper's) the block starts as exactly the identity: the affine
    weight and bias of ``norm`` are zero, or with ``norm=""`` W_z's; ``"small"`` or
    ``"standard"`` start the branch non-zero (``residual.init_residual_branch``; which when, as
    measured: ``residual.INIT_ADVICE``).

    The attention core runs in float32 (or float64 for float64 inputs) with autocast disabled,
    and with memory linear in H * W for every mode, forward and backward. Submodule names
    (``theta``, ``phi``, ``g``, ``concat_project``, ``out``, ``norm``) are checkpoint keys.

    Args:
        in_channels: C, channels of the input and output.
        mode: one of ``NONLOCAL_MODES``.
        reduction: inner channels are ``in_channels // reduction``; must divide in_channels.
        sub_sample: 2x2 max pooling on the key side.
        use_scale: scale embedded-Gaussian logits (that mode only) by 1/sqrt(inner channels).
        norm: "", "BN", "SyncBN", "GN" (gcd(32, C) groups) or a callable
            ``channels -> nn.Module`` with a trainable affine ``weight``.
        init: "identity", "small" or "standard": how the residual branch starts.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        mode: str = "embedded_gaussian",
        reduction: int = 2,
        sub_sample: bool = True,
        use_scale: bool = True,
        norm: NormSpec = "BN",
        init: str = "identity",
    ):
        super().__init__()
        if mode not in NONLOCAL_MODES:
            raise ValueError(f"Unknown non-local mode {mode!r}; expected one of {NONLOCAL_MODES}.")
        inner_channels = require_divisible(in_channels, reduction, "in_channels", "reduction")
        self.in_channels = in_channels
        self.inner_channels = inner_channels
        self.mode = mode
        self.sub_sample = bool(sub_sample)
        self.use_scale = bool(use_scale)

        self.g = conv1x1(in_channels, inner_channels, bias=True)
        if mode != "gaussian":
            self.theta = conv1x1(in_channels, inner_channels, bias=True)
            self.phi = conv1x1(in_channels, inner_channels, bias=True)
        if mode == "concatenation":
            self.concat_project = nn.Conv2d(2 * inner_channels, 1, kernel_size=1, bias=False)
            nn.init.normal_(self.concat_project.weight, std=1.0 / math.sqrt(2 * inner_channels))
        self._build_residual_branch(inner_channels, norm, init)

    def extra_repr(self) -> str:
        return fields_repr(self, "in_channels inner_channels mode sub_sample use_scale")

    def _pool(self, t: Tensor) -> Tensor:
        if not self.sub_sample:
            return t
        return F.max_pool2d(t, kernel_size=2, stride=2, ceil_mode=True)

    def embed(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """
        Queries (B, Dq, H, W), keys (B, Dq, Hk, Wk) and values (B, inner, Hk, Wk): theta(x),
        pooled phi(x), pooled g(x); in gaussian mode x and pooled x (Dq = C there, else inner).
        """
        values = self._pool(self.g(x))  # (B, inner, Hk, Wk)
        if self.mode == "gaussian":
            return x, self._pool(x), values  # (B, C, H, W), (B, C, Hk, Wk)
        return self.theta(x), self._pool(self.phi(x)), values

    def _logit_scale(self) -> float:
        if self.mode == "embedded_gaussian" and self.use_scale:
            return 1.0 / math.sqrt(self.inner_channels)
        return 1.0

    def _concat_halves(self, queries: Tensor, keys: Tensor):
        """a_i = w_theta . theta_i (B, N) and b_j = w_phi . phi_j (B, M)."""
        w = self.concat_project.weight.flatten()
        w_theta, w_phi = w[: self.inner_channels], w[self.inner_channels :]
        a = torch.matmul(queries.flatten(2).transpose(1, 2), w_theta.to(queries.dtype)[:, None])
        b = torch.matmul(keys.flatten(2).transpose(1, 2), w_phi.to(keys.dtype)[:, None])
        return a.squeeze(2), b.squeeze(2)

    def aggregate(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """The pairwise part of eq. 1 on ``embed``'s maps: y (B, inner, H, W), float32 or wider."""
        batch, _, height, width = queries.shape
        # (B, D, N), (B, D, M), (B, inner, M)
        q, k, v = queries.flatten(2), keys.flatten(2), values.flatten(2)
        if self.mode in ("gaussian", "embedded_gaussian"):
            y = softmax_aggregate(q, k, v, self._logit_scale())  # (B, inner, N)
        elif self.mode == "dot_product":
            y = dot_product_aggregate(q, k, v)
        else:
            y = concatenation_aggregate(*self._concat_halves(queries, keys), v)
        return y.reshape(batch, v.shape[1], height, width)  # (B, inner, H, W)

    def transform(self, x: Tensor) -> Tensor:
        """
        y of eq. 1: (B, C, H, W) -> (B, inner_channels, H, W), before W_z, in float32 or wider.
        """
        return self.aggregate(*self.embed(x))

    @torch.no_grad()
    def attention_for_queries(self, x: Tensor, queries: Tensor) -> Tensor:
        """
        Normalised pairwise weights f(x_i, x_j) / C(x) for chosen query positions only: a Q x M
        matrix, never N x M; keeps nothing.

        Args:
            x: (B, C, H, W) input of the block.
            queries: (Q, 2) integer (row, col) positions in x.
        Returns:
            (B, Q, Hk, Wk) weights over the key grid. With ``sub_sample``, key (u, v) is the
            max-pooled cell covering input rows 2u..2u+1 and columns 2v..2v+1; without it,
            the key grid is the input grid. Softmax modes' weights sum to 1 over keys.
        """
        queries = check_queries(queries, x, type(self).__name__, self.in_channels)
        query_maps, key_maps, _ = self.embed(x)
        flat = queries[:, 0] * x.shape[-1] + queries[:, 1]
        dtype = compute_dtype(query_maps)
        q = query_maps.flatten(2)[:, :, flat].to(dtype)  # (B, D, Q)
        k = key_maps.flatten(2).to(dtype)  # (B, D, M)
        num_keys = k.shape[-1]
        if self.mode in ("gaussian", "embedded_gaussian"):
            logits = self._logit_scale() * torch.einsum("bdq,bdm->bqm", q, k)
            weights = torch.softmax(logits, dim=-1)
        elif self.mode == "dot_product":
            weights = torch.einsum("bdq,bdm->bqm", q, k) / num_keys
        else:
            a, b = self._concat_halves(query_maps.to(dtype), key_maps.to(dtype))
            weights = F.relu(a[:, flat].unsqueeze(-1) + b.unsqueeze(1)) / num_keys
        return weights.reshape(x.shape[0], len(flat), *key_maps.shape[-2:])
