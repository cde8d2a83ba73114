"""
Full-matrix reference implementations, written straight from the papers' formulas.

They build every pairwise weight (N x M for non-local, N C' x N C' per group for CGNL) and
exist to check the memory-lean blocks (tests) and to measure against (tools/). They reuse a
block's parameters but none of its computation.
"""

import torch
import torch.nn.functional as F

from .cgnl_block import CGNLBlock2d, taylor_coefficients
from .nonlocal_block import NonLocalBlock2d

__all__ = [
    "reference_embed",
    "pairwise_matrix",
    "reference_aggregate",
    "reference_nonlocal_op",
    "reference_cgnl_op",
    "reference_forward",
]


def _subsample(block: NonLocalBlock2d, t: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling that pads odd sizes with -inf, so no row or column is lost."""
    if not block.sub_sample:
        return t
    pad_w, pad_h = t.shape[-1] % 2, t.shape[-2] % 2
    t = F.pad(t, (0, pad_w, 0, pad_h), value=float("-inf"))
    return F.max_pool2d(t, 2)


def reference_embed(block: NonLocalBlock2d, x: torch.Tensor):
    """Queries (B, Dq, N), keys (B, Dq, M), values (B, inner, M) for eq. 1."""
    values = _subsample(block, block.g(x)).flatten(2)
    if block.mode == "gaussian":
        return x.flatten(2), _subsample(block, x).flatten(2), values
    return block.theta(x).flatten(2), _subsample(block, block.phi(x)).flatten(2), values


def pairwise_matrix(block: NonLocalBlock2d, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The normalised weights f(x_i, x_j) / C(x) of eq. 1, (B, N, M), from q (B, D, N), k (B, D, M)."""
    num_keys = k.shape[-1]
    logits = torch.einsum("bdn,bdm->bnm", q, k)
    if block.mode == "gaussian":
        return torch.softmax(logits, dim=-1)  # exp(x_i . x_j) / sum_j exp(x_i . x_j)
    if block.mode == "embedded_gaussian":
        scale = block.inner_channels**-0.5 if block.use_scale else 1.0
        return torch.softmax(scale * logits, dim=-1)
    if block.mode == "dot_product":
        return logits / num_keys
    # concatenation: w_f . [theta_i, phi_j] = w_theta . theta_i + w_phi . phi_j
    w = block.concat_project.weight.flatten()
    a = torch.einsum("bdn,d->bn", q, w[: block.inner_channels])
    b = torch.einsum("bdm,d->bm", k, w[block.inner_channels :])
    return F.relu(a.unsqueeze(2) + b.unsqueeze(1)) / num_keys


def reference_aggregate(
    block: NonLocalBlock2d, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """y_i = sum_j w_ij v_j with the full matrix: q (B, D, N), k (B, D, M), v (B, Dv, M) -> (B, Dv, N)."""
    return torch.einsum("bnm,bdm->bdn", pairwise_matrix(block, q, k), v)


def reference_nonlocal_op(block: NonLocalBlock2d, x: torch.Tensor) -> torch.Tensor:
    """y of eq. 1 with the full matrix: (B, C, H, W) -> (B, inner, H, W)."""
    y = reference_aggregate(block, *reference_embed(block, x))
    return y.reshape(x.shape[0], block.inner_channels, *x.shape[-2:])


def reference_cgnl_op(block: CGNLBlock2d, x: torch.Tensor) -> torch.Tensor:
    """Y' of eq. 8 with the full (N C') x (N C') kernel matrix per group."""
    batch, _, height, width = x.shape
    t, p, g = (m(x).reshape(batch, block.groups, -1) for m in (block.theta, block.phi, block.g))
    prod = t.unsqueeze(-1) * p.unsqueeze(-2)  # theta_i phi_j, (B, G, NC', NC')
    if block.kernel == "dot":
        kernel = prod
    else:
        coeffs = taylor_coefficients(block.kernel, block.order, block.gamma)
        kernel = sum(c * prod**power for power, c in enumerate(coeffs))
        if block.kernel == "gaussian_rbf":
            envelope = torch.exp(-block.gamma * (t.unsqueeze(-1) ** 2 + p.unsqueeze(-2) ** 2))
            kernel = kernel * envelope
    y = torch.einsum("bgij,bgj->bgi", kernel, g)
    if block.use_scale:
        y = y / p.shape[-1] ** 0.5
    return y.reshape(batch, block.inner_channels, height, width)


def reference_forward(block, x: torch.Tensor) -> torch.Tensor:
    """z = x + norm(W_z y) with the full-matrix y, for either block type."""
    if isinstance(block, NonLocalBlock2d):
        y = reference_nonlocal_op(block, x)
    elif isinstance(block, CGNLBlock2d):
        y = reference_cgnl_op(block, x)
    else:
        raise TypeError(f"expected a NonLocalBlock2d or CGNLBlock2d, got {type(block).__name__}")
    branch = block.out(y)
    if block.norm is not None:
        branch = block.norm(branch)
    return x + branch
