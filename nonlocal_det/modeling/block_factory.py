"""
The one way to choose a block of the non-local family: ``nonlocal_block_factory`` for the block
placed after residual blocks (NL, CGNL, DNL) and ``context_block_factory`` for the GC block
placed inside them, from a config or from keyword arguments (LazyConfig), with every value
checked before any block is built.
"""

import inspect
from typing import Callable, Dict, Optional

from detectron2.config import configurable
from torch import nn

from ..errors import ConfigError
from ..layers import (
    CGNL_KERNELS,
    GC_FUSIONS,
    GC_POOLINGS,
    NONLOCAL_MODES,
    RESIDUAL_INITS,
    CGNLBlock2d,
    DisentangledNonLocal2d,
    GlobalContextBlock2d,
    NonLocalBlock2d,
)
from ..layers.norm import detectron2_norm

BLOCK_CLASSES = {"NL": NonLocalBlock2d, "CGNL": CGNLBlock2d, "DNL": DisentangledNonLocal2d}
_CHOICES = {
    "mode": NONLOCAL_MODES,
    "kernel": CGNL_KERNELS,
    "init": RESIDUAL_INITS,
    "pooling": GC_POOLINGS,
}
# Arguments checked by the block class when a block is built (some fit only some channel counts).
_SIZE_ARGS = ("reduction", "groups", "order", "gamma", "ratio", "temperature")
# Per block kind: its own config section and the arguments read from it.
_OWN_ARGS = {
    "NL": ("", ("mode", "sub_sample", "use_scale")),
    "CGNL": ("CGNL.", ("kernel", "groups", "order", "use_scale", "gamma")),
    "DNL": ("", ("sub_sample", "use_scale")),
}


def _factory_args_from_config(cfg) -> Dict:
    """The factory's arguments from MODEL.NONLOCAL, with the config key of each for errors."""
    nl = cfg.MODEL.NONLOCAL
    if nl.BLOCK not in _OWN_ARGS:
        raise ConfigError(f"MODEL.NONLOCAL.BLOCK={nl.BLOCK!r} is not one of {tuple(BLOCK_CLASSES)}")
    section, names = _OWN_ARGS[nl.BLOCK]
    node = nl.CGNL if section else nl
    args = {"reduction": nl.REDUCTION, "norm": nl.NORM, "init": nl.INIT}
    keys = {name: f"MODEL.NONLOCAL.{name.upper()}" for name in ("block", *args)}
    args.update({name: node[name.upper()] for name in names})
    keys.update({name: f"MODEL.NONLOCAL.{section}{name.upper()}" for name in names})
    if nl.BLOCK == "DNL":
        if nl.MODE != "embedded_gaussian":
            raise ConfigError(
                f"MODEL.NONLOCAL.MODE={nl.MODE!r}: the DNL block's pairwise term is the embedded "
                "Gaussian; MODE chooses the NL block's pairwise function. Leave MODE at "
                "'embedded_gaussian' with BLOCK 'DNL'."
            )
        args["temperature"] = nl.DNL.TEMPERATURE
        keys["temperature"] = "MODEL.NONLOCAL.DNL.TEMPERATURE"
    return {"block": nl.BLOCK, **args, "config_keys": keys}


def _checked_factory(block_class, name: str, kwargs: Dict, keys: Dict[str, str]):
    """``channels -> block_class(channels, **kwargs)``, every argument checked now."""

    def key(arg):
        return keys.get(arg, arg)

    try:
        inspect.signature(block_class).bind(1, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{key('block')}={name!r}: {block_class.__name__} {e}") from None
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
            size_keys = ", ".join(key(arg) for arg in _SIZE_ARGS if arg in kwargs)
            raise ConfigError(
                f"Cannot build a {name} block for {channels} channels from "
                f"{size_keys or 'its arguments'}: {e}"
            ) from e

    return build


@configurable(from_config=_factory_args_from_config)
def nonlocal_block_factory(
    block: str = "NL", *, config_keys: Optional[Dict[str, str]] = None, **kwargs
) -> Callable[[int], nn.Module]:
    """
    ``channels -> nn.Module``: a function that builds the chosen block for a feature map of that
    many channels. Called as ``nonlocal_block_factory(cfg)`` it reads ``cfg.MODEL.NONLOCAL``; in a
    LazyConfig, ``L(nonlocal_block_factory)(block="NL", mode="embedded_gaussian", norm="GN")``.

    Args:
        block: "NL" (``NonLocalBlock2d``), "CGNL" (``CGNLBlock2d``) or "DNL"
            (``DisentangledNonLocal2d``).
        config_keys: the config key of each argument, named in errors (set when built from a
            config; otherwise errors name the arguments).
        kwargs: keyword arguments of the block class. ``norm`` may also be any Detectron2 norm
            name with a trainable affine weight (``layers.norm.detectron2_norm``).

    Raises:
        ConfigError (a ValueError) now for an unknown block, argument, mode, kernel or norm, and
        when a block is built for a channel count that ``reduction`` / ``groups`` do not divide.
    """
    keys = config_keys or {}
    if block not in BLOCK_CLASSES:
        raise ConfigError(
            f"{keys.get('block', 'block')}={block!r} is not one of {tuple(BLOCK_CLASSES)}"
        )
    return _checked_factory(BLOCK_CLASSES[block], block, kwargs, keys)


def _context_args_from_config(cfg) -> Dict:
    gc = cfg.MODEL.NONLOCAL.GC
    keys = {"ratio": "GC.RATIO", "pooling": "GC.POOLING", "fusions": "GC.FUSION", "init": "INIT"}
    return {
        "ratio": gc.RATIO,
        "pooling": gc.POOLING,
        "fusions": tuple(gc.FUSION),
        "init": cfg.MODEL.NONLOCAL.INIT,
        "config_keys": {arg: f"MODEL.NONLOCAL.{key}" for arg, key in keys.items()},
    }


@configurable(from_config=_context_args_from_config)
def context_block_factory(
    *, config_keys: Optional[Dict[str, str]] = None, **kwargs
) -> Callable[[int], nn.Module]:
    """
    ``channels -> GlobalContextBlock2d``: the GC block for a residual branch of that many
    channels. Called as ``context_block_factory(cfg)`` it reads ``cfg.MODEL.NONLOCAL.GC`` and
    ``INIT``; in a LazyConfig, ``L(context_block_factory)(ratio=1 / 16, pooling="att")``.

    Raises:
        ConfigError now for an unknown argument, pooling, fusion or init, naming its key.
    """
    keys = {"block": "context block", **(config_keys or {})}
    fusions = kwargs.get("fusions", GC_FUSIONS[:1])
    if isinstance(fusions, str) or not fusions or any(f not in GC_FUSIONS for f in fusions):
        raise ConfigError(
            f"{keys.get('fusions', 'fusions')}={fusions!r} must be a non-empty subset of "
            f"{list(GC_FUSIONS)}"
        )
    return _checked_factory(GlobalContextBlock2d, "GC", kwargs, keys)
