"""
The one way to choose a non-local block: ``nonlocal_block_factory``, from a config or from
keyword arguments (LazyConfig), with every value checked before any block is built.
"""

import inspect
from typing import Callable, Dict, Optional

from detectron2.config import configurable
from torch import nn

from ..errors import ConfigError
from ..layers import CGNL_KERNELS, NONLOCAL_MODES, RESIDUAL_INITS, CGNLBlock2d, NonLocalBlock2d
from ..layers.norm import detectron2_norm

__all__ = ["BLOCK_CLASSES", "nonlocal_block_factory"]

BLOCK_CLASSES = {"NL": NonLocalBlock2d, "CGNL": CGNLBlock2d}
_CHOICES = {"mode": NONLOCAL_MODES, "kernel": CGNL_KERNELS, "init": RESIDUAL_INITS}
# Arguments whose fit depends on the channel count, checked when a block is built.
_SIZE_ARGS = ("reduction", "groups", "order", "gamma")


def _factory_args_from_config(cfg) -> Dict:
    """The factory's arguments from MODEL.NONLOCAL, with the config key of each for errors."""
    nl = cfg.MODEL.NONLOCAL
    keys = {
        "block": "MODEL.NONLOCAL.BLOCK",
        "reduction": "MODEL.NONLOCAL.REDUCTION",
        "norm": "MODEL.NONLOCAL.NORM",
        "init": "MODEL.NONLOCAL.INIT",
    }
    if nl.BLOCK == "CGNL":
        args = {
            name: nl.CGNL[name.upper()]
            for name in ("kernel", "groups", "order", "use_scale", "gamma")
        }
        keys.update({name: f"MODEL.NONLOCAL.CGNL.{name.upper()}" for name in args})
    else:
        args = {name: nl[name.upper()] for name in ("mode", "sub_sample", "use_scale")}
        keys.update({name: f"MODEL.NONLOCAL.{name.upper()}" for name in args})
    return {
        "block": nl.BLOCK,
        "reduction": nl.REDUCTION,
        "norm": nl.NORM,
        "init": nl.INIT,
        **args,
        "config_keys": keys,
    }


@configurable(from_config=_factory_args_from_config)
def nonlocal_block_factory(
    block: str = "NL", *, config_keys: Optional[Dict[str, str]] = None, **kwargs
) -> Callable[[int], nn.Module]:
    """
    ``channels -> nn.Module``: a function that builds the chosen block for a feature map of
    that many channels.

    Called as ``nonlocal_block_factory(cfg)`` it reads ``cfg.MODEL.NONLOCAL``; in a LazyConfig,
    ``L(nonlocal_block_factory)(block="NL", mode="embedded_gaussian", norm="GN")``.

    Args:
        block: "NL" (``NonLocalBlock2d``) or "CGNL" (``CGNLBlock2d``).
        config_keys: the config key of each argument, named in errors (set when built from a
            config; otherwise errors name the arguments).
        kwargs: keyword arguments of the block class. ``norm`` may also be any Detectron2 norm
            name with a trainable affine weight (``layers.norm.detectron2_norm``).

    Raises:
        ConfigError (a ValueError) now for an unknown block, argument, mode, kernel or norm, and
        when a block
        is built for a channel count that ``reduction`` / ``groups`` do not divide.
    """
    keys = config_keys or {}

    def key(arg):
        return keys.get(arg, arg)

    if block not in BLOCK_CLASSES:
        raise ConfigError(f"{key('block')}={block!r} is not one of {tuple(BLOCK_CLASSES)}")
    block_class = BLOCK_CLASSES[block]
    try:
        inspect.signature(block_class).bind(1, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{key('block')}={block!r}: {block_class.__name__} {e}") from None
    for arg, choices in _CHOICES.items():
        if arg in kwargs and kwargs[arg] not in choices:
            raise ConfigError(f"{key(arg)}={kwargs[arg]!r} is not one of {choices}")
    if isinstance(kwargs.get("norm"), str):
        try:
            kwargs["norm"] = detectron2_norm(kwargs["norm"], key("norm"))
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def build(channels: int) -> nn.Module:
        try:
            return block_class(channels, **kwargs)
        except (TypeError, ValueError) as e:
            size_keys = (
                ", ".join(key(arg) for arg in _SIZE_ARGS if arg in kwargs) or "its arguments"
            )
            raise ConfigError(
                f"Cannot build a {block} block for {channels} channels from {size_keys}: {e}"
            ) from e

    return build
