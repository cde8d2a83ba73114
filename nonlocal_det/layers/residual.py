"""What the non-local and CGNL blocks share: z = x + norm(W_z y(x)), an identity at init."""
import torch
from torch import nn

from .norm import NormSpec, build_norm, residual_branch, zero_init_residual_branch
from .validation import check_feature_map


def conv1x1(in_channels: int, out_channels: int, *, bias: bool, groups: int = 1) -> nn.Conv2d:
    """1x1 conv with MSRA (He) initialisation, the paper's choice for the new layers."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias, groups=groups)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


class ResidualBlock2d(nn.Module):
    """
    Base of blocks computing z = x + norm(W_z y(x)) with ``y = self.transform(x)`` of
    ``inner_channels`` channels. ``_build_residual_branch`` creates ``out`` (W_z) and ``norm``
    and zero-initialises them so the block starts as exactly the identity.
    """

    in_channels: int

    def _build_residual_branch(self, inner_channels: int, norm: NormSpec, *, groups: int = 1, gn_groups: int = 32):
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
