"""Non-local blocks built from ``cfg.MODEL.NONLOCAL``, with errors that name the key."""
from typing import Callable

from detectron2.layers import get_norm
from torch import nn

from ..layers import CGNL_KERNELS, NONLOCAL_MODES, CGNLBlock2d, NonLocalBlock2d

_OWN_NORMS = ("", "BN", "SyncBN", "GN")
_FROZEN_NORMS = ("FrozenBN",)


def _norm_spec(norm: str):
    """Our own norm names as they are; other Detectron2 norm names through get_norm."""
    if norm in _FROZEN_NORMS:
        raise ValueError(
            f"MODEL.NONLOCAL.NORM={norm!r} is not allowed: a non-local block starts as an "
            "identity by zeroing its norm's affine weight, and a frozen norm could never "
            "learn it back. Use 'GN' (default; trains with 1-2 images per GPU), 'SyncBN', "
            "'BN' or ''."
        )
    if norm in _OWN_NORMS:
        return norm
    try:
        get_norm(norm, 32)
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"MODEL.NONLOCAL.NORM={norm!r} is not a known norm; use one of {_OWN_NORMS} or "
            "another Detectron2 norm name"
        ) from e
    return lambda channels: get_norm(norm, channels)


def nonlocal_block_factory(cfg) -> Callable[[int], nn.Module]:
    """
    ``channels -> block`` for the block ``cfg.MODEL.NONLOCAL`` describes (NL or CGNL).
    Checks every key up front, so a bad config fails when the model is built.
    """
    nl = cfg.MODEL.NONLOCAL
    norm = _norm_spec(nl.NORM)
    if nl.BLOCK == "NL":
        if nl.MODE not in NONLOCAL_MODES:
            raise ValueError(f"MODEL.NONLOCAL.MODE={nl.MODE!r} is not one of {NONLOCAL_MODES}")

        def build(channels):
            return NonLocalBlock2d(
                channels,
                mode=nl.MODE,
                reduction=nl.REDUCTION,
                sub_sample=nl.SUB_SAMPLE,
                use_scale=nl.USE_SCALE,
                norm=norm,
            )

    elif nl.BLOCK == "CGNL":
        if nl.CGNL.KERNEL not in CGNL_KERNELS:
            raise ValueError(f"MODEL.NONLOCAL.CGNL.KERNEL={nl.CGNL.KERNEL!r} is not one of {CGNL_KERNELS}")

        def build(channels):
            return CGNLBlock2d(
                channels,
                kernel=nl.CGNL.KERNEL,
                groups=nl.CGNL.GROUPS,
                order=nl.CGNL.ORDER,
                reduction=nl.REDUCTION,
                norm=norm,
                use_scale=nl.CGNL.USE_SCALE,
                gamma=nl.CGNL.GAMMA,
            )

    else:
        raise ValueError(f"MODEL.NONLOCAL.BLOCK={nl.BLOCK!r} is not one of ('NL', 'CGNL')")

    def build_checked(channels):
        try:
            return build(channels)
        except (TypeError, ValueError) as e:
            keys = "MODEL.NONLOCAL.REDUCTION" + (
                ", MODEL.NONLOCAL.CGNL.GROUPS / ORDER / GAMMA" if nl.BLOCK == "CGNL" else ""
            )
            raise ValueError(f"Cannot build a {nl.BLOCK} block for {channels} channels from {keys}: {e}") from e

    return build_checked
