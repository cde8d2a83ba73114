"""
The norm after W_z, and the one rule for which norms a block may use: a block starts as the
identity by zeroing its norm's affine weight (or, with no norm, W_z itself), so the norm must
have an affine weight that trains. Frozen norms (FrozenBN, ``requires_grad=False``) and norms
without one (``affine=False``, Identity) are refused, whether chosen by our names, a callable or
a Detectron2 name (``detectron2_norm``).
"""

import math
from typing import Callable, Union

from torch import nn

NormSpec = Union[str, None, Callable[[int], nn.Module]]

NORM_NAMES = ("", "BN", "SyncBN", "GN")
# Detectron2's names for a norm whose affine weight is frozen.
FROZEN_NORM_NAMES = ("FrozenBN", "FrozenBatchNorm")


def _frozen_name_error(norm: str, key: str) -> ValueError:
    return ValueError(
        f"{key}={norm!r} is not allowed: its affine weight is frozen, and a non-local block "
        "starts as an identity by zeroing that weight, so it could never be trained away (the "
        "block would stay an identity forever). Use 'GN' (trains with 1-2 images per GPU), "
        "'SyncBN', 'BN' or '' (no norm)."
    )


def check_trainable_affine(module: nn.Module) -> nn.Module:
    """Return ``module`` if it has a trainable affine ``weight``; raise ValueError otherwise."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or not weight.requires_grad:
        raise ValueError(
            f"The norm {type(module).__name__} after W_z has no trainable affine weight "
            "(frozen, or affine=False). A non-local block starts as an identity by zeroing "
            "that weight, and a frozen zero weight would keep it an identity forever. Use a "
            "norm with a learnable affine weight ('BN', 'SyncBN', 'GN') or norm=''."
        )
    return module


def build_norm(norm: NormSpec, channels: int, *, gn_groups: int = 32) -> nn.Module:
    """
    The norm after W_z for ``channels`` channels, or None for ``norm`` "" or None: "BN",
    "SyncBN", "GN" (``gcd(gn_groups, channels)`` groups, so any channel count works) or a
    callable ``channels -> nn.Module`` with a trainable affine ``weight``.
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
        return check_trainable_affine(module)
    if not isinstance(norm, str):
        raise TypeError(f"norm must be a str or a callable channels -> nn.Module, got {norm!r}")
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "GN":
        return nn.GroupNorm(math.gcd(gn_groups, channels), channels)
    if norm in FROZEN_NORM_NAMES:
        raise _frozen_name_error(norm, "norm")
    raise ValueError(f"Unknown norm {norm!r}; expected one of {NORM_NAMES} or a callable.")


def detectron2_norm(norm: str, key: str = "norm") -> NormSpec:
    """
    A norm spec for a Detectron2 config's norm name: ours (``NORM_NAMES``) as they are, others
    ("naiveSyncBN_N", "LN", ...) as ``channels -> detectron2.layers.get_norm(norm, channels)``.
    Frozen and unknown names raise ValueError naming ``key``, before any block is built.
    """
    if norm in FROZEN_NORM_NAMES:
        raise _frozen_name_error(norm, key)
    if norm in NORM_NAMES:
        return norm
    from detectron2.layers import get_norm

    try:
        check_trainable_affine(get_norm(norm, 32))
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"{key}={norm!r} is not a known norm with a trainable affine weight ({e}); use one of "
            f"{NORM_NAMES} or another Detectron2 norm name (e.g. 'naiveSyncBN_N')"
        ) from e
    return lambda channels: get_norm(norm, channels)
