"""Normalisation after W_z, and the zero initialisation that makes a block start as identity."""
import math
from typing import Callable, Union

import torch
from torch import nn

NormSpec = Union[str, None, Callable[[int], nn.Module]]

_NORM_NAMES = ("", "BN", "SyncBN", "GN")


def build_norm(norm: NormSpec, channels: int, *, gn_groups: int = 32) -> nn.Module:
    """
    Build the normalisation layer that follows W_z.

    Args:
        norm: "" or None (no norm), "BN", "SyncBN", "GN", or a callable
            ``channels -> nn.Module``.
        channels: number of channels it normalises (the block's input channels).
        gn_groups: groups for "GN"; reduced to ``gcd(gn_groups, channels)`` so any channel
            count works.

    Returns:
        The module, or None for "" / None.
    """
    if norm is None or norm == "":
        return None
    if callable(norm):
        module = norm(channels)
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"norm callable must return an nn.Module for {channels} channels, "
                f"got {type(module).__name__}"
            )
        return module
    if not isinstance(norm, str):
        raise TypeError(f"norm must be a str or a callable channels -> nn.Module, got {norm!r}")
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "GN":
        return nn.GroupNorm(math.gcd(gn_groups, channels), channels)
    if norm in ("FrozenBN", "FrozenBatchNorm"):
        raise ValueError(
            f"norm={norm!r} cannot be used in a non-local block: its affine weight is frozen, "
            "so the zero initialisation that makes the block an identity could never be "
            f"trained away. Use one of {_NORM_NAMES[1:]} (or '' for none)."
        )
    raise ValueError(f"Unknown norm {norm!r}; expected one of {_NORM_NAMES} or a callable.")


def zero_init_residual_branch(out: nn.Conv2d, norm: nn.Module) -> None:
    """
    Make ``norm(out(y)) == 0`` for every y, so ``x + norm(out(y))`` is exactly x.

    Zeroes the norm's affine weight and bias when there is a norm, else ``out``'s weight and
    bias. Raises ValueError when the norm has no trainable affine weight: zeroed, it would
    keep the block an identity forever.
    """
    if norm is None:
        nn.init.zeros_(out.weight)
        if out.bias is not None:
            nn.init.zeros_(out.bias)
        return
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, nn.Parameter) or not weight.requires_grad:
        raise ValueError(
            f"The norm {type(norm).__name__} after W_z has no trainable affine weight "
            "(frozen, or affine=False). A non-local block starts as an identity by zeroing "
            "that weight, and a frozen zero weight would keep it an identity forever. Use a "
            "norm with a learnable affine weight ('BN', 'SyncBN', 'GN') or norm=''."
        )
    nn.init.zeros_(weight)
    bias = getattr(norm, "bias", None)
    if isinstance(bias, nn.Parameter):
        nn.init.zeros_(bias)


def residual_branch(out: nn.Conv2d, norm: nn.Module, y):
    """
    norm(out(y)) with autocast disabled, in the dtype of ``out``'s weight.

    y from the dot-product, concatenation and CGNL operations is unbounded (it grows with
    the activations cubed), so under mixed precision W_z and the norm stay in float32
    rather than overflow float16.
    """
    with torch.autocast(device_type=y.device.type, enabled=False):
        branch = out(y.to(out.weight.dtype))
        if norm is not None:
            branch = norm(branch)
    return branch
