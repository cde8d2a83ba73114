"""
The non-local operation y_i = 1/C(x) * sum_j f(q_i, k_j) v_j (eq. 1 of Wang et al.), for each
pairwise function f, with memory linear in the numbers of queries N and keys M.

All functions take channel-major sequences, as conv feature maps flatten to: ``q`` (B, D, N),
``k`` (B, D, M), ``v`` (B, Dv, M), and return ``y`` (B, Dv, N), computed in at least float32
whatever the input dtype and any surrounding autocast; callers cast back.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .valid_region import exporting


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 if any input is float64: half precision is never used for logits."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


EXPLICIT_MATRIX_MAX_RATIO = 2


def explicit_matrix_fits(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """
    True when the N x M weight matrix has at most ``EXPLICIT_MATRIX_MAX_RATIO`` times as many
    elements as q, k and v together.

    Building it then keeps memory within a constant factor of the inputs (still linear in N
    for a given width), and plain matrix products are as fast as torch's fused CPU kernel or
    faster; the fused kernel's blocking pays off once the matrix dominates (measured on CPU
    at D=512, M=N/4: equal at ratio ~1.4 and ~5, fused 2x faster at ratio ~100).
    """
    n, m = q.shape[-1], k.shape[-1]
    per_sample = sum(math.prod(t.shape[1:]) for t in (q, k, v))
    return n * m <= EXPLICIT_MATRIX_MAX_RATIO * per_sample


def softmax_aggregate(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """
    y_i = sum_j softmax_j(scale * q_i . k_j) v_j (Gaussian and embedded Gaussian modes).

    Above ``explicit_matrix_fits``, and unless the model is being exported, this is torch's
    fused ``scaled_dot_product_attention``, which never holds the N x M matrix, forward or
    backward. Its memory-lean kernels need contiguous row-major inputs of one dtype and equal
    query/value widths, otherwise torch silently builds the full matrix; so the narrower of q/k
    and v is zero-padded to the other's width: zero columns change neither the logits nor the
    kept output columns.
    """
    dtype = compute_dtype(q, k, v)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        # An exported model takes explicit products and softmax at every size: every ONNX opset
        # has them (the fused kernel needs opset 14), at the cost of the N x M matrix per image;
        # a graph recorded for one size cannot chunk the queries of another without a loop.
        if exporting() or explicit_matrix_fits(q, k, v):
            # Row-major products keep the N x M gradients contiguous for softmax's backward.
            if scale != 1.0:
                q = q * scale  # N x D elements, fewer than the N x M logits
            weights = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # (B, N, M)
            return torch.bmm(weights, v.transpose(1, 2)).transpose(1, 2)
        dq, dv = q.shape[1], v.shape[1]
        rows = [t.transpose(1, 2) for t in (q, k, v)]  # (B, L, D) views
        if dq < dv:
            rows[0], rows[1] = (F.pad(t, (0, dv - dq)) for t in rows[:2])
        elif dv < dq:
            rows[2] = F.pad(rows[2], (0, dq - dv))
        q_rows, k_rows, v_rows = (t.contiguous().unsqueeze(1) for t in rows)
        y = F.scaled_dot_product_attention(q_rows, k_rows, v_rows, scale=scale)  # (B, 1, N, D')
        return y.squeeze(1)[..., :dv].transpose(1, 2)


def dot_product_aggregate(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """
    y_i = 1/M * sum_j (q_i . k_j) v_j, evaluated as (v k^T / M) q: O((N + M) D Dv) time,
    no N x M matrix.
    """
    dtype = compute_dtype(q, k, v)
    num_keys = k.shape[-1]
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        context = torch.bmm(v, k.transpose(1, 2)).div_(num_keys)  # (B, Dv, D)
        return torch.bmm(context, q)


def concatenation_aggregate(a: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """
    y_i = 1/M * sum_j ReLU(a_i + b_j) v_j, exactly, without the N x M matrix.

    ``a`` (B, N) and ``b`` (B, M) are the query and key halves of the concatenation
    projection, a_i = w_theta . theta_i and b_j = w_phi . phi_j; ``v`` is (B, Dv, M). For a
    fixed i the terms with a_i + b_j > 0 are the keys with the largest b, so with keys sorted
    by b in descending order and K_i = #{j : b_j > -a_i}:

        sum_j ReLU(a_i + b_j) v_j = a_i * S_v[K_i] + S_bv[K_i],

    where S_v[K] and S_bv[K] are prefix sums over the first K sorted keys of v_j and b_j v_j.
    Memory O((N + M) Dv); time O((N + M) log M + (N + M) Dv). Ties a_i + b_j = 0 count as
    zero, which is the value and the (sub)gradient autograd gives ReLU there.
    """
    dtype = compute_dtype(a, b, v)
    batch, num_keys = b.shape
    channels = v.shape[1]
    with torch.autocast(device_type=v.device.type, enabled=False):
        a, b, v = a.to(dtype), b.to(dtype), v.to(dtype)
        b_sorted, order = torch.sort(b, dim=1, descending=True)
        v_sorted = torch.gather(v, 2, order.unsqueeze(1).expand(-1, channels, -1))  # (B, Dv, M)
        zero = v.new_zeros(batch, channels, 1)
        prefix_v = torch.cat([zero, torch.cumsum(v_sorted, dim=2)], dim=2)  # (B, Dv, M + 1)
        prefix_bv = torch.cat([zero, torch.cumsum(b_sorted.unsqueeze(1) * v_sorted, dim=2)], dim=2)
        # -b_sorted is ascending; the count of its entries < a_i is #{j : b_j > -a_i}.
        counts = torch.searchsorted(
            (-b_sorted).detach().contiguous(), a.detach().contiguous(), side="left"
        )
        index = counts.unsqueeze(1).expand(-1, channels, -1)  # (B, Dv, N)
        y = a.unsqueeze(1) * torch.gather(prefix_v, 2, index) + torch.gather(prefix_bv, 2, index)
        return y.div_(num_keys)
