"""The compact generalized non-local block of Yue et al. (NeurIPS 2018), sec. 3.3-3.5."""

import math

import torch

from ..errors import ConfigError
from .aggregation import compute_dtype
from .norm import NormSpec
from .residual import ResidualBlock2d, conv1x1, fields_repr, require_divisible
from .valid_region import exporting

__all__ = ["CGNLBlock2d", "CGNL_KERNELS", "taylor_coefficients", "max_taylor_order"]

CGNL_KERNELS = ("dot", "embedded_gaussian", "gaussian_rbf")


def max_taylor_order(dtype: torch.dtype) -> int:
    """
    The largest Taylor order P whose coefficient 1/P! is a normal number of ``dtype`` (float32:
    33, float64: 170, float16: 7): beyond it the terms underflow to nothing while their powers
    t^P still overflow, so a higher order adds only the risk of infinities.
    """
    tiny, order = torch.finfo(dtype).tiny, 0
    while math.lgamma(order + 2) <= -math.log(tiny):  # log (P + 1)! <= log(1 / tiny)
        order += 1
    return order


def taylor_coefficients(kernel: str, order: int, gamma: float):
    """
    alpha_p^2 for p = 0..order in f(t, p) ~= sum_p alpha_p^2 (t p)^p (eq. 9 of the paper).

    - embedded_gaussian, exp(t p): alpha_p^2 = 1 / p!
    - gaussian_rbf, exp(-gamma (t - p)^2) = exp(-gamma t^2) exp(-gamma p^2) exp(2 gamma t p):
      alpha_p^2 = (2 gamma)^p / p!; the factors exp(-gamma t^2), exp(-gamma p^2) are applied
      per element by the block, so the expansion is exact up to the truncation (the paper
      replaces them by a constant beta for l2-normalised inputs).
    """
    if kernel == "embedded_gaussian":
        return [1.0 / math.factorial(p) for p in range(order + 1)]
    if kernel == "gaussian_rbf":
        return [(2.0 * gamma) ** p / math.factorial(p) for p in range(order + 1)]
    raise ValueError(
        f"kernel {kernel!r} has no Taylor expansion; expected one of {CGNL_KERNELS[1:]}"
    )


class CGNLBlock2d(ResidualBlock2d):
    """
    Z = X + concat_groups(norm(W_z Y')) (eq. 13), where within each of ``groups`` channel
    groups every (position, channel) element attends to every other one:

        vec(Y') = f(theta, phi) g ~= Theta (Phi^T g)   (eqs. 8-12)

    with theta, phi, g the group's N*C' elements (N = H*W positions, C' = inner / groups
    channels) and f expanded to Taylor order P so that f(theta_i, phi_j) =
    sum_p alpha_p^2 (theta_i phi_j)^p. Evaluated right to left: one (P+1)-vector
    z_p = sum_j alpha_p phi_j^p g_j per group, then y_i = sum_p alpha_p theta_i^p z_p, in
    O(N C (P+1)) time and O(N C) memory.

    Kernels: ``"dot"`` (f = theta_i phi_j; ``order`` unused), ``"embedded_gaussian"``
    (exp(theta_i phi_j)), ``"gaussian_rbf"`` (exp(-gamma (theta_i - phi_j)^2)). The paper's
    operation has no normalisation; ``use_scale`` divides by sqrt(N C').

    W_z (``out``) is a grouped 1x1 conv (inner -> C, ``groups`` groups) followed by ``norm``;
    "GN" normalises each of the ``groups`` groups on its own (the paper's per-group BN). The
    block starts as ``NonLocalBlock2d`` does (``init``). Submodules ``theta``, ``phi``, ``g``,
    ``out``, ``norm`` are checkpoint keys.

    Args:
        in_channels: C.
        kernel: one of ``CGNL_KERNELS``.
        groups: channel groups G; must divide the inner channels and C.
        order: Taylor order P >= 0 for the Gaussian kernels.
        reduction: inner channels = in_channels // reduction.
        use_scale: divide the group sum by sqrt(N * C').
        gamma: RBF width; small enough that 2 gamma |theta phi| << 1 keeps an order-3
            expansion accurate for unit-scale features.
        norm, init: as for ``NonLocalBlock2d``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        kernel: str = "dot",
        groups: int = 8,
        order: int = 3,
        reduction: int = 2,
        norm: NormSpec = "GN",
        use_scale: bool = False,
        gamma: float = 1e-4,
        init: str = "identity",
    ):
        super().__init__()
        if kernel not in CGNL_KERNELS:
            raise ValueError(f"Unknown CGNL kernel {kernel!r}; expected one of {CGNL_KERNELS}.")
        top = max_taylor_order(torch.float32)  # the dtype the block computes in (or float64)
        if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order <= top:
            raise ValueError(
                f"order must be an int in [0, {top}] (the Taylor order P; 1/P! underflows "
                f"float32 beyond {top}), got {order!r}"
            )
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        inner_channels = require_divisible(in_channels, reduction, "in_channels", "reduction")
        require_divisible(
            inner_channels, groups, "inner channels (in_channels // reduction)", "groups"
        )
        self.in_channels = in_channels
        self.inner_channels = inner_channels
        self.kernel = kernel
        self.groups = groups
        self.order = order
        self.use_scale = bool(use_scale)
        self.gamma = float(gamma)

        self.theta = conv1x1(in_channels, inner_channels, bias=False)
        self.phi = conv1x1(in_channels, inner_channels, bias=False)
        self.g = conv1x1(in_channels, inner_channels, bias=False)
        self._build_residual_branch(inner_channels, norm, init, groups=groups, gn_groups=groups)

    def extra_repr(self) -> str:
        return fields_repr(self, "in_channels inner_channels kernel groups order use_scale")

    def _expansion(self):
        """[(alpha_p, p)] for the kernel: [(1, 1)] for dot."""
        if self.kernel == "dot":
            return [(1.0, 1)]
        coeffs = taylor_coefficients(self.kernel, self.order, self.gamma)
        return [(math.sqrt(c), p) for p, c in enumerate(coeffs)]

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Y' of eq. 12 for all groups: (B, C, H, W) -> (B, inner, H, W), float32 or wider."""
        batch, _, height, width = x.shape
        t, p, g = self.theta(x), self.phi(x), self.g(x)  # (B, inner, H, W) each
        dtype = compute_dtype(t, p, g)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # (B, G, N * C'): each group's elements as one vector (eq. 7); explicit as B may be 0
            group_size = self.inner_channels // self.groups * height * width
            t, p, g = (v.to(dtype).reshape(batch, self.groups, group_size) for v in (t, p, g))
            if self.kernel == "gaussian_rbf":
                # The per-element factors exp(-gamma t_i^2), exp(-gamma p_j^2) of the RBF.
                g = g * torch.exp(-self.gamma * p * p)
            y = torch.zeros_like(t)  # (B, G, N * C')
            for alpha, power in self._expansion():
                z = alpha * (p.pow(power) * g).sum(dim=-1, keepdim=True)  # (B, G, 1)
                y = y + (alpha * z) * t.pow(power)
            if self.kernel == "gaussian_rbf":
                y = y * torch.exp(-self.gamma * t * t)
            if self.use_scale:
                y = y / p.shape[-1] ** 0.5  # not math.sqrt: a trace would freeze the size
            if self.kernel != "dot" and not exporting() and not torch.isfinite(y).all():
                self._overflowed(t, p, x)
        return y.reshape(batch, self.inner_channels, height, width)  # (B, inner, H, W)

    def _overflowed(self, t, p, x):
        """A finite input gave non-finite terms: the expansion overflowed; say what to lower."""
        if not torch.isfinite(x).all():
            return  # the input was not finite already: not the block's doing
        largest = max(t.abs().max().item(), p.abs().max().item(), 1.0 + 1e-6)
        fits = int(math.log(torch.finfo(t.dtype).max) / math.log(largest) / 2)
        raise ConfigError(
            f"CGNLBlock2d(kernel={self.kernel!r}, order={self.order}): its Taylor expansion "
            f"overflowed {t.dtype} (embeddings up to |t| = {largest:.3g}, whose {self.order}th "
            f"powers multiply); lower the order (MODEL.NONLOCAL.CGNL.ORDER) to at most {fits}, "
            "or use kernel 'dot'"
        )
