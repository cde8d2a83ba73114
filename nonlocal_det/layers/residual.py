"""
What the non-local and CGNL blocks share: z = x + norm(W_z y(x)), by default an identity at init.
Their forward pass: ``ResidualBlock2d.forward`` here, the block's ``transform`` and the pairwise
sums of ``aggregation.py``.
"""

import torch
from torch import nn

from ..errors import UnsupportedSetupError
from .norm import NormSpec, build_norm
from .valid_region import norm_over_valid, valid_groups


def conv1x1(in_channels: int, out_channels: int, *, bias: bool, groups: int = 1) -> nn.Conv2d:
    """1x1 conv with MSRA (He) initialisation, the paper's choice for the new layers."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias, groups=groups)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def logits_conv1x1(in_channels: int) -> nn.Conv2d:
    """1x1 conv C -> 1 giving one logit per position, He-initialised over its fan-in (GCNet's)."""
    conv = nn.Conv2d(in_channels, 1, kernel_size=1)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return conv


def require_divisible(value: int, divisor: int, value_name: str, divisor_name: str) -> int:
    """Return ``value // divisor`` after checking both are positive ints and divisor divides."""
    for name, v in ((value_name, value), (divisor_name, divisor)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__} ({v!r})")
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    if value % divisor:
        raise ValueError(
            f"{divisor_name}={divisor} must divide {value_name}={value}; choose a "
            f"{divisor_name} that divides {value}"
        )
    return value // divisor


def check_feature_map(x, channels: int, owner: str) -> None:
    """Raise TypeError/ValueError unless x is a (B, channels, H, W) floating tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{owner} expects a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}"
        )
    shape = tuple(x.shape)
    if x.dim() != 4:
        raise ValueError(f"{owner} expects a 4-D input (B, C, H, W), got {x.dim()}-D shape {shape}")
    if x.shape[1] != channels:
        raise ValueError(
            f"{owner} was built for {channels} input channels, got {x.shape[1]} "
            f"(input shape {shape})"
        )
    if not x.is_floating_point():
        raise TypeError(f"{owner} expects a floating-point input, got {x.dtype}")
    if 0 in x.shape[2:]:
        raise ValueError(
            f"{owner} got an empty map of shape {shape}: it needs at least one position"
        )


def check_queries(queries, x: torch.Tensor, owner: str, channels: int) -> torch.Tensor:
    """Checks x; ``queries`` as a (Q, 2) integer (row, col) tensor in x's grid, on x's device."""
    check_feature_map(x, channels, owner)
    queries = torch.as_tensor(queries, device=x.device)
    if queries.dim() != 2 or queries.shape[1] != 2 or queries.dtype.is_floating_point:
        raise ValueError(
            f"queries must be an integer tensor of shape (Q, 2) holding (row, col); got "
            f"shape {tuple(queries.shape)} and dtype {queries.dtype}"
        )
    height, width = x.shape[-2:]
    rows, cols = queries[:, 0], queries[:, 1]
    if ((rows < 0) | (rows >= height) | (cols < 0) | (cols >= width)).any():
        raise ValueError(f"queries must lie inside the {height}x{width} input grid")
    return queries


# How the residual branch norm(W_z y) starts (``init`` of the blocks, MODEL.NONLOCAL.INIT), and
# the factor on the norm's affine weight (or, with no norm, on W_z's MSRA weights) of each.
RESIDUAL_INIT_SCALES = {"identity": 0.0, "small": 0.1, "standard": 1.0}
RESIDUAL_INITS = tuple(RESIDUAL_INIT_SCALES)
# Which init when, as measured (docs/usage.md#which-init has the runs; generated from here).
INIT_ADVICE = (
    '"identity" to fine-tune a pre-trained model: it starts as the stock model. From scratch no '
    "start suits every block: a zero-started branch hardly opens (in 400 iterations the "
    'quickstart\'s norm weights after W_z grew from 0 to 0.003-0.05); "standard" opened a block '
    'without a norm (NORM "", the long-range configs) on 3 of 3 seeds but diverged with GroupNorm '
    'after W_z (the quickstart, 5 of 5 seeds); "small" trained the quickstart as well as '
    '"identity" (5 of 5 seeds), whether its blocks opened there was not measured.'
)


def init_residual_branch(out: nn.Conv2d, norm: nn.Module, init: str = "identity") -> None:
    """
    Initialise the residual branch ``norm(out(y))`` of ``x + norm(out(y))``; the scaled layer's
    bias starts at zero.

    - ``"identity"`` (the paper, sec. 4.1): the norm's affine weight (``build_norm`` has checked
      that it trains), or with no norm ``out``'s weight, is zero, so the block is exactly x.
      Then theta, phi and g get no gradient until that weight has moved.
    - ``"small"``: the norm's affine weight is 0.1, or with no norm ``out``'s MSRA weights are
      scaled by 0.1: the branch starts small but non-zero, theta, phi and g learn from step one.
    - ``"standard"``: the norm's affine weight 1, or ``out``'s MSRA weights, as any layer
      trained from scratch.
    """
    if init not in RESIDUAL_INIT_SCALES:
        raise ValueError(f"init={init!r} is not one of {RESIDUAL_INITS}")
    scale = RESIDUAL_INIT_SCALES[init]
    with torch.no_grad():
        if norm is None:
            out.weight.mul_(scale)
        else:
            norm.weight.fill_(scale)
        bias = getattr(out if norm is None else norm, "bias", None)
        if isinstance(bias, nn.Parameter):
            bias.zero_()


def apply_in_wider_dtype(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """
    ``module(x)``, with its parameters and buffers in x's dtype where theirs is narrower (a
    ``.half()`` block); buffers the call updates (BatchNorm's running statistics) copied back.
    """
    own, dtype = next(module.parameters()).dtype, x.dtype
    if torch.promote_types(dtype, own) == own:
        return module(x.to(own))
    params = {n: p.to(dtype) for n, p in module.named_parameters()}
    buffers = {n: b.to(dtype) if b.is_floating_point() else b for n, b in module.named_buffers()}
    out = torch.func.functional_call(module, {**params, **buffers}, (x,))
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            if buffers[name] is not buffer:
                buffer.copy_(buffers[name])
    return out


def pointwise_conv(conv: nn.Conv2d, y: torch.Tensor) -> torch.Tensor:
    """
    ``conv(y)`` for a 1x1 conv (groups allowed), as a matrix product in the wider of y's and the
    weight's dtypes: (B, C_in, H, W) -> (B, C_out, H, W).

    A matrix product, not ``conv2d``: with dynamic shapes, torch.compile's Inductor fails to
    lower a convolution that follows the attention's matrix products ("cannot determine truth
    value of Relational"); the product is the same arithmetic and compiles. ``matmul`` with the
    batch on the left rather than ``einsum``: fvcore counts the former exactly and rounds the
    latter's FLOPs to four significant digits.
    """
    dtype = torch.promote_types(y.dtype, conv.weight.dtype)
    groups = conv.groups
    batch, _, height, width = y.shape
    c_in, c_out = conv.in_channels // groups, conv.out_channels // groups
    weight = conv.weight.to(dtype).reshape(groups, c_out, c_in)  # (G, C_out / G, C_in / G)
    grouped = y.to(dtype).reshape(batch, groups, c_in, height * width)
    out = torch.matmul(grouped.transpose(2, 3), weight.transpose(1, 2))  # (B, G, H * W, C_out / G)
    out = out.transpose(2, 3).reshape(batch, conv.out_channels, height, width)
    if conv.bias is not None:
        out = out + conv.bias.to(dtype)[:, None, None]
    return out


def fields_repr(module: nn.Module, names: str) -> str:
    """A block's ``extra_repr``: ``name=value`` for each of the space-separated ``names``."""
    return ", ".join(f"{name}={getattr(module, name)!r}" for name in names.split())


class NotScriptable:
    """Refuses ``torch.jit.script`` in one line: the blocks' shape logic is Python it can't type."""

    def __prepare_scriptable__(self):
        raise UnsupportedSetupError(
            f"{type(self).__name__} cannot be scripted (torch.jit.script, which torch deprecates); "
            "export the model by tracing (torch.jit.trace with Detectron2's TracingAdapter, or "
            "torch.onnx.export at any opset from 11) or with torch.export: docs/export.md."
        )


class ResidualBlock2d(NotScriptable, nn.Module):
    """
    Base of blocks computing z = x + norm(W_z y(x)) with ``y = self.transform(x)`` of
    ``inner_channels`` channels; ``_build_residual_branch`` creates W_z (``out``, ``groups``
    groups) and ``norm`` (``gn_groups`` groups for "GN"), started by ``init_residual_branch``.
    """

    in_channels: int

    def _build_residual_branch(self, inner: int, norm: NormSpec, init: str, groups=1, gn_groups=32):
        self.norm = build_norm(norm, self.in_channels, gn_groups=gn_groups)
        self.out = conv1x1(inner, self.in_channels, bias=self.norm is None, groups=groups)
        init_residual_branch(self.out, self.norm, init)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """y: (B, C, H, W) -> (B, inner_channels, H, W)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, valid_sizes=None) -> torch.Tensor:
        """
        Args:
            x: (B, C, H, W).
            valid_sizes: optional, per image (h, w): its real positions are rows < h and
                columns < w (Detectron2 pads at the bottom and right); a sequence of B pairs or
                an integer tensor (B, 2). Each image is then computed on its own valid
                rectangle, with norm statistics over valid positions (``valid_region.py``),
                and padded positions pass x through. None, or no image padded: the whole map.
        Returns:
            (B, C, H, W), x + norm(W_z y).
        """
        owner = type(self).__name__
        check_feature_map(x, self.in_channels, owner)
        weight = self.out.weight
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"{owner} holds {weight.dtype} parameters and got a {x.dtype} input: convert the "
                f"block (.to({x.dtype})) or the input, or call it under torch.autocast"
            )
        groups = valid_groups(valid_sizes, x, owner)
        if groups is None:
            ys = [self.transform(x)]  # (B, inner, H, W)
        else:  # each group: the images of one valid size (b, C, h, w), on that rectangle
            ys = [self.transform(x[index, :, :h, :w]) for index, h, w in groups]
        # y of the dot-product, concatenation and CGNL operations grows with the activations
        # cubed, so W_z and the norm run with autocast disabled, in y's float32 or wider (also in
        # a .half() block), rather than overflow float16; the branch returns in W_z's dtype.
        with torch.autocast(device_type=x.device.type, enabled=False):
            pieces = [pointwise_conv(self.out, y) for y in ys]  # (b, C, h, w)
            pieces = norm_over_valid(self.norm, pieces, apply_in_wider_dtype)
            pieces = [piece.to(weight.dtype) for piece in pieces]
        if groups is None:
            return x + pieces[0]
        branch = x.new_zeros(x.shape, dtype=pieces[0].dtype)  # (B, C, H, W), 0 on padding
        for (index, h, w), piece in zip(groups, pieces):
            branch[index, :, :h, :w] = piece
        return x + branch
