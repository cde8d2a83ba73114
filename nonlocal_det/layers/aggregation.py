"""
The non-local operation y_i = 1/C(x) * sum_j f(q_i, k_j) v_j (eq. 1 of Wang et al.), for each
pairwise function f, with memory linear in the numbers of queries N and keys M.

All functions take row-major sequences: ``q`` (B, N, D), ``k`` (B, M, D), ``v`` (B, M, Dv),
and return ``y`` (B, N, Dv). They compute in at least float32, whatever the input dtype and
any surrounding autocast, and return that compute dtype; callers cast back.
"""
import torch
import torch.nn.functional as F


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 if any input is float64: half precision is never used for logits."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _as_compute(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).contiguous()


def softmax_aggregate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """
    y_i = sum_j softmax_j(scale * q_i . k_j) v_j (Gaussian and embedded Gaussian modes).

    Uses torch's fused ``scaled_dot_product_attention``. Its memory-lean kernels need
    contiguous inputs of one dtype and equal query/value widths; otherwise torch silently
    builds the full N x M matrix. So q/k or v is zero-padded to the wider of the two widths:
    zero columns change neither the logits nor the kept output columns.
    """
    dtype = compute_dtype(q, k, v)
    dq, dv = q.shape[-1], v.shape[-1]
    if dq < dv:
        q = F.pad(q, (0, dv - dq))
        k = F.pad(k, (0, dv - dq))
    elif dv < dq:
        v = F.pad(v, (0, dq - dv))
    with torch.autocast(device_type=q.device.type, enabled=False):
        y = F.scaled_dot_product_attention(
            _as_compute(q, dtype).unsqueeze(1),
            _as_compute(k, dtype).unsqueeze(1),
            _as_compute(v, dtype).unsqueeze(1),
            scale=scale,
        )
    return y.squeeze(1)[..., :dv]


def dot_product_aggregate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """
    y_i = 1/M * sum_j (q_i . k_j) v_j, evaluated as q (k^T v) / M: O((N + M) D Dv) time,
    no N x M matrix.
    """
    dtype = compute_dtype(q, k, v)
    num_keys = k.shape[1]
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = (t.to(dtype) for t in (q, k, v))
        context = torch.bmm(k.transpose(1, 2), v / num_keys)  # (B, D, Dv)
        return torch.bmm(q, context)


def concatenation_aggregate(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """
    y_i = 1/M * sum_j ReLU(a_i + b_j) v_j, exactly, without the N x M matrix.

    ``a`` (B, N) and ``b`` (B, M) are the query and key halves of the concatenation
    projection, a_i = w_theta . theta_i and b_j = w_phi . phi_j. For fixed i the terms with
    a_i + b_j > 0 are the keys with the largest b, so with keys sorted by b in descending
    order and K_i = #{j : b_j > -a_i}:

        sum_j ReLU(a_i + b_j) v_j = a_i * S_v[K_i] + S_bv[K_i],

    where S_v[K] and S_bv[K] are prefix sums over the first K sorted keys of v_j and b_j v_j.
    Memory O((N + M) Dv); time O(M log M + N log M + (N + M) Dv). Ties a_i + b_j = 0 count
    as zero, which is the value and (sub)gradient of ReLU there.
    """
    dtype = compute_dtype(a, b, v)
    batch, num_keys = b.shape
    with torch.autocast(device_type=v.device.type, enabled=False):
        a, b, v = a.to(dtype), b.to(dtype), v.to(dtype)
        b_sorted, order = torch.sort(b, dim=1, descending=True)
        v_sorted = torch.gather(v, 1, order.unsqueeze(-1).expand_as(v))
        zero_row = v.new_zeros(batch, 1, v.shape[-1])
        prefix_v = torch.cat([zero_row, torch.cumsum(v_sorted, dim=1)], dim=1)
        prefix_bv = torch.cat([zero_row, torch.cumsum(b_sorted.unsqueeze(-1) * v_sorted, dim=1)], dim=1)
        # -b_sorted is ascending; the count of its entries < a_i is #{j : b_j > -a_i}.
        counts = torch.searchsorted((-b_sorted).detach().contiguous(), a.detach().contiguous(), side="left")
        index = counts.unsqueeze(-1).expand(-1, -1, v.shape[-1])
        y = a.unsqueeze(-1) * torch.gather(prefix_v, 1, index) + torch.gather(prefix_bv, 1, index)
        return y / num_keys
