"""
What the non-local and CGNL blocks share: z = x + norm(W_z y(x)), an identity at init.

A block's forward pass reads in three files: ``ResidualBlock2d.forward`` here, the block's
``transform`` (``nonlocal_block.py`` or ``cgnl_block.py``) and the pairwise sums it calls
(``aggregation.py``).
"""

import torch
from torch import nn

from .norm import NormSpec, build_norm


def conv1x1(in_channels: int, out_channels: int, *, bias: bool, groups: int = 1) -> nn.Conv2d:
    """1x1 conv with MSRA (He) initialisation, the paper's choice for the new layers."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias, groups=groups)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def check_feature_map(x, channels: int, owner: str) -> None:
    """Raise TypeError/ValueError unless x is a (B, channels, H, W) floating tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{owner} expects a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}"
        )
    if x.dim() != 4:
        raise ValueError(
            f"{owner} expects a 4-D input (B, C, H, W), got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{owner} was built for {channels} input channels, got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )
    if not x.is_floating_point():
        raise TypeError(f"{owner} expects a floating-point input, got {x.dtype}")


def zero_init_residual_branch(out: nn.Conv2d, norm: nn.Module) -> None:
    """
    Make ``norm(out(y)) == 0`` for every y, so ``x + norm(out(y))`` is exactly x: zeroes the
    norm's affine weight and bias when there is a norm (``build_norm`` has checked that the
    weight trains), else ``out``'s weight and bias.
    """
    if norm is None:
        nn.init.zeros_(out.weight)
        if out.bias is not None:
            nn.init.zeros_(out.bias)
        return
    nn.init.zeros_(norm.weight)
    bias = getattr(norm, "bias", None)
    if isinstance(bias, nn.Parameter):
        nn.init.zeros_(bias)


def residual_branch(out: nn.Conv2d, norm: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """
    norm(out(y)) with autocast disabled, in the dtype of ``out``'s weight:
    y (B, inner, H, W) -> (B, C, H, W).

    y from the dot-product, concatenation and CGNL operations is unbounded (it grows with
    the activations cubed), so under mixed precision W_z and the norm stay in float32
    rather than overflow float16.
    """
    with torch.autocast(device_type=y.device.type, enabled=False):
        branch = out(y.to(out.weight.dtype))
        if norm is not None:
            branch = norm(branch)
    return branch


class ResidualBlock2d(nn.Module):
    """
    Base of blocks computing z = x + norm(W_z y(x)) with ``y = self.transform(x)`` of
    ``inner_channels`` channels. ``_build_residual_branch`` creates ``out`` (W_z) and ``norm``
    and zero-initialises them so the block starts as exactly the identity.
    """

    in_channels: int

    def _build_residual_branch(
        self, inner_channels: int, norm: NormSpec, *, groups: int = 1, gn_groups: int = 32
    ):
        self.norm = build_norm(norm, self.in_channels, gn_groups=gn_groups)
        self.out = conv1x1(inner_channels, self.in_channels, bias=self.norm is None, groups=groups)
        zero_init_residual_branch(self.out, self.norm)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """y: (B, C, H, W) -> (B, inner_channels, H, W)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, C, H, W).
        Returns:
            (B, C, H, W), x + norm(W_z y).
        """
        check_feature_map(x, self.in_channels, type(self).__name__)
        return x + residual_branch(self.out, self.norm, self.transform(x))
