"""
Full-matrix reference implementations, written straight from the papers' formulas.

They build every pairwise weight (N x M for non-local, N C' x N C' per group for CGNL) and
exist to check the memory-lean blocks (tests) and to measure against (tools/). They reuse a
block's parameters but none of its computation.
"""

import torch
import torch.nn.functional as F

from nonlocal_det.layers.cgnl_block import CGNLBlock2d, taylor_coefficients
from nonlocal_det.layers.context_block import GlobalContextBlock2d
from nonlocal_det.layers.disentangled_block import DisentangledNonLocal2d
from nonlocal_det.layers.nonlocal_block import NonLocalBlock2d

__all__ = [
    "reference_embed",
    "pairwise_matrix",
    "reference_aggregate",
    "reference_nonlocal_op",
    "reference_cgnl_op",
    "reference_dnl_op",
    "reference_gc_forward",
    "reference_forward",
    "reference_masked_forward",
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
    """
    The normalised weights f(x_i, x_j) / C(x) of eq. 1, (B, N, M), from q (B, D, N), k (B, D, M).
    """
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
    """
    y_i = sum_j w_ij v_j with the full matrix: q (B, D, N), k (B, D, M), v (B, Dv, M) -> (B, Dv, N).
    """
    return torch.einsum("bnm,bdm->bdn", pairwise_matrix(block, q, k), v)


def reference_nonlocal_op(block: NonLocalBlock2d, x: torch.Tensor) -> torch.Tensor:
    """y of eq. 1 with the full matrix: (B, C, H, W) -> (B, inner, H, W)."""
    y = reference_aggregate(block, *reference_embed(block, x))
    return y.reshape(x.shape[0], block.inner_channels, *x.shape[-2:])


def _cgnl_kernel(block: CGNLBlock2d, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """f(theta_i, phi_j) for every pair of a group's elements: (..., NC') -> (..., NC', NC')."""
    prod = t.unsqueeze(-1) * p.unsqueeze(-2)  # theta_i phi_j
    if block.kernel == "dot":
        return prod
    coeffs = taylor_coefficients(block.kernel, block.order, block.gamma)
    kernel = sum(c * prod**power for power, c in enumerate(coeffs))
    if block.kernel == "gaussian_rbf":
        kernel = kernel * torch.exp(-block.gamma * (t.unsqueeze(-1) ** 2 + p.unsqueeze(-2) ** 2))
    return kernel


def reference_cgnl_op(block: CGNLBlock2d, x: torch.Tensor) -> torch.Tensor:
    """Y' of eq. 8 with the full (N C') x (N C') kernel matrix per group."""
    batch, _, height, width = x.shape
    t, p, g = (m(x).reshape(batch, block.groups, -1) for m in (block.theta, block.phi, block.g))
    y = torch.einsum("bgij,bgj->bgi", _cgnl_kernel(block, t, p), g)
    if block.use_scale:
        y = y / p.shape[-1] ** 0.5
    return y.reshape(batch, block.inner_channels, height, width)


def _softmax(logits: torch.Tensor, valid: torch.Tensor = None) -> torch.Tensor:
    """exp(l_j) / sum_j exp(l_j) over the last dim, written out; ``valid`` keys only (bool)."""
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    e = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def reference_dnl_op(block: DisentangledNonLocal2d, x: torch.Tensor, valid=None) -> torch.Tensor:
    """
    y of the disentangled block (Yin et al., eq. 13) with the full N x M pairwise matrix:
    y_i = sum_j [softmax_j(s/T (q_i - mean q) . (k_j - mean k)) + softmax_j(m_j)] v_j, with
    m = W_m x on the key grid. ``valid`` (H, W) bool, for one image (B = 1): means, softmaxes
    and keys restricted to the valid positions (padded positions -inf before the key pooling).
    """
    if valid is None:
        valid = torch.ones(x.shape[-2:], dtype=torch.bool, device=x.device)
    fill = (~valid)[None, None]
    key_valid = _subsample(block, valid[None, None].double()).flatten(2)[0, 0] > 0  # (M,)

    def keys_of(t):
        pooled = _subsample(block, t.masked_fill(fill, float("-inf"))).flatten(2)
        return pooled.masked_fill(~key_valid, 0.0)

    q = block.theta(x).flatten(2)[..., valid.flatten()]  # (B, D, N_valid)
    k, v, m = keys_of(block.phi(x)), keys_of(block.g(x)), keys_of(block.conv_mask(x))
    q = q - q.mean(dim=-1, keepdim=True)
    k = k - k[..., key_valid].mean(dim=-1, keepdim=True)
    scale = (block.inner_channels**-0.5 if block.use_scale else 1.0) / block.temperature
    pairwise = _softmax(scale * torch.einsum("bdn,bdm->bnm", q, k), key_valid)  # (B, N, M)
    unary = _softmax(m[:, 0], key_valid)  # (B, M)
    weights = pairwise + unary[:, None, :]
    y = torch.zeros(x.shape[0], block.inner_channels, x.shape[-2] * x.shape[-1], dtype=x.dtype)
    y[..., valid.flatten()] = torch.einsum("bnm,bdm->bdn", weights, v)
    return y.reshape(x.shape[0], block.inner_channels, *x.shape[-2:])


def _reference_transform(transform, c: torch.Tensor) -> torch.Tensor:
    """W_v2 ReLU(LN(W_v1 c)) for context vectors c (B, C), written out."""
    first, layer_norm, _, last = transform
    h = c @ first.weight.flatten(1).T + first.bias  # (B, planes)
    mean, var = h.mean(dim=1, keepdim=True), h.var(dim=1, unbiased=False, keepdim=True)
    h = (h - mean) / torch.sqrt(var + layer_norm.eps)
    h = torch.relu(h * layer_norm.weight.flatten() + layer_norm.bias.flatten())
    return h @ last.weight.flatten(1).T + last.bias  # (B, C)


def reference_gc_forward(block: GlobalContextBlock2d, x: torch.Tensor, valid=None):
    """
    GCNet's block (Cao et al., eq. 3) written out: z_i = x_i * sigmoid(T_mul(c)) + T_add(c),
    c = sum_j a_j x_j. ``valid`` (B, H, W) bool: pooling over each image's valid positions,
    padded positions returned as x.
    """
    batch, channels, height, width = x.shape
    if valid is None:
        valid = torch.ones(batch, height, width, dtype=torch.bool, device=x.device)
    flat, mask = x.reshape(batch, channels, -1), valid.reshape(batch, -1)
    if block.pooling == "att":
        conv = block.conv_mask
        logits = torch.einsum("c,bcn->bn", conv.weight.flatten(), flat) + conv.bias
        weights = _softmax(logits, mask)
    else:
        weights = mask.to(x.dtype) / mask.sum(dim=1, keepdim=True)
    context = torch.einsum("bcn,bn->bc", flat, weights)
    out = x
    if block.channel_mul_conv is not None:
        out = (
            out
            * torch.sigmoid(_reference_transform(block.channel_mul_conv, context))[..., None, None]
        )
    if block.channel_add_conv is not None:
        out = out + _reference_transform(block.channel_add_conv, context)[..., None, None]
    return torch.where(valid[:, None], out, x)


def reference_forward(block, x: torch.Tensor) -> torch.Tensor:
    """z = x + norm(W_z y) with the full-matrix y (GC: its formula), for any block type."""
    if isinstance(block, GlobalContextBlock2d):
        return reference_gc_forward(block, x)
    if isinstance(block, DisentangledNonLocal2d):
        y = reference_dnl_op(block, x)
    elif isinstance(block, NonLocalBlock2d):
        y = reference_nonlocal_op(block, x)
    elif isinstance(block, CGNLBlock2d):
        y = reference_cgnl_op(block, x)
    else:
        raise TypeError(f"expected one of nonlocal_det.layers' blocks, got {type(block).__name__}")
    branch = block.out(y)
    if block.norm is not None:
        branch = block.norm(branch)
    return x + branch


def _masked_nonlocal_op(block: NonLocalBlock2d, x: torch.Tensor, valid: torch.Tensor):
    """
    y of eq. 1 on the padded map of one image (1, C, H, W), keys restricted to the valid
    positions ``valid`` (H, W): padded positions are -inf before the key side's max pooling,
    padded keys get weight 0, and dot product / concatenation divide by the valid keys' count.
    """
    fill = (~valid)[None, None]
    key_valid = _subsample(block, valid[None, None].double()).flatten(2)[0, 0] > 0  # (M,)

    def keys_of(t):
        return _subsample(block, t.masked_fill(fill, float("-inf"))).flatten(2)

    values = keys_of(block.g(x)).masked_fill(~key_valid, 0.0)
    if block.mode == "gaussian":
        q, k = x.flatten(2), keys_of(x)
    else:
        q, k = block.theta(x).flatten(2), keys_of(block.phi(x))
    k = k.masked_fill(~key_valid, 0.0)
    num_valid = int(key_valid.sum())
    logits = torch.einsum("bdn,bdm->bnm", q, k)
    if block.mode in ("gaussian", "embedded_gaussian"):
        scale = (
            block.inner_channels**-0.5
            if block.mode == "embedded_gaussian" and block.use_scale
            else 1.0
        )
        weights = torch.softmax((scale * logits).masked_fill(~key_valid, float("-inf")), dim=-1)
    elif block.mode == "dot_product":
        weights = logits.masked_fill(~key_valid, 0.0) / num_valid
    else:
        w = block.concat_project.weight.flatten()
        a = torch.einsum("bdn,d->bn", q, w[: block.inner_channels])
        b = torch.einsum("bdm,d->bm", k, w[block.inner_channels :])
        weights = F.relu(a.unsqueeze(2) + b.unsqueeze(1)).masked_fill(~key_valid, 0.0) / num_valid
    y = torch.einsum("bnm,bdm->bdn", weights, values)
    return y.reshape(1, block.inner_channels, *x.shape[-2:])


def _masked_cgnl_op(block: CGNLBlock2d, x: torch.Tensor, valid: torch.Tensor):
    """Y' of eq. 8 on one padded image, the sums over j restricted to valid positions."""
    _, _, height, width = x.shape
    mask = (
        valid[None, None].expand(1, block.inner_channels, height, width).reshape(block.groups, -1)
    )
    t, p, g = (m(x).reshape(block.groups, -1) for m in (block.theta, block.phi, block.g))
    kernel = _cgnl_kernel(block, t, p).masked_fill(~mask.unsqueeze(1), 0.0)  # only valid j
    y = torch.einsum("gij,gj->gi", kernel, g)
    if block.use_scale:
        y = y / int(mask[0].sum()) ** 0.5  # sqrt(N_valid C')
    return y.reshape(1, block.inner_channels, height, width)


def _masked_norm(norm, branch: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """
    GroupNorm per image and BatchNorm (training: over every image's valid positions; eval:
    running statistics) with statistics over ``valid`` (B, H, W) positions only, written out.
    """
    if norm is None:
        return branch
    channels = branch.shape[1]
    weight, bias = norm.weight.view(1, -1, 1, 1), norm.bias.view(1, -1, 1, 1)
    if isinstance(norm, torch.nn.GroupNorm):
        out = torch.zeros_like(branch)
        per_group = channels // norm.num_groups
        for i in range(branch.shape[0]):
            values = branch[i][:, valid[i]].reshape(norm.num_groups, -1)  # (G, C/G * N_valid)
            mean = values.mean(dim=1).repeat_interleave(per_group).view(-1, 1, 1)
            var = values.var(dim=1, unbiased=False).repeat_interleave(per_group).view(-1, 1, 1)
            out[i] = (branch[i] - mean) / torch.sqrt(var + norm.eps)
        return out * weight + bias
    if not norm.training:
        mean, var = norm.running_mean.view(1, -1, 1, 1), norm.running_var.view(1, -1, 1, 1)
        return (branch - mean) / torch.sqrt(var + norm.eps) * weight + bias
    values = branch.permute(1, 0, 2, 3)[:, valid]  # (C, valid positions of all images)
    mean, var = values.mean(dim=1), values.var(dim=1, unbiased=False)
    return (branch - mean.view(1, -1, 1, 1)) / torch.sqrt(
        var.view(1, -1, 1, 1) + norm.eps
    ) * weight + bias


def reference_masked_forward(block, x: torch.Tensor, valid_sizes) -> torch.Tensor:
    """
    z = x + norm(W_z y) on a padded batch, written as masking on the padded map: image i's
    positions outside rows < h_i, columns < w_i are excluded as keys and from the norm's
    statistics (GroupNorm or BatchNorm), and their branch is 0. Full matrices, one image at a time.
    """
    batch, _, height, width = x.shape
    valid = torch.zeros(batch, height, width, dtype=torch.bool)
    for i, (h, w) in enumerate(valid_sizes):
        valid[i, :h, :w] = True
    if isinstance(block, GlobalContextBlock2d):
        return reference_gc_forward(block, x, valid)
    if isinstance(block, DisentangledNonLocal2d):
        op = reference_dnl_op
    elif isinstance(block, NonLocalBlock2d):
        op = _masked_nonlocal_op
    else:
        op = _masked_cgnl_op
    y = torch.cat([op(block, x[i : i + 1], valid[i]) for i in range(batch)])
    branch = _masked_norm(block.norm, block.out(y), valid)
    return x + branch.masked_fill(~valid[:, None], 0.0)
