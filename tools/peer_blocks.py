"""
The peers' blocks, built with our blocks' weights copied in, for tools/compare_peers.py and
tools/benchmark_blocks.py: mmcv's ``NonLocal2d`` and ``ContextBlock`` (pip's ``mmcv-lite`` with
``mmengine``) and mmsegmentation's ``DisentangledNonLocal2d`` (pip's ``mmsegmentation``).

mmsegmentation's package imports compiled mmcv operators at import time, which ``mmcv-lite``
lacks; its DNL class needs none of them, so ``mmseg_dnl_class`` takes that class's definition from
the installed ``dnl_head.py`` and defines it against mmcv's ``NonLocal2d`` alone. Nothing of the
peers is part of this repository: they are read from the installed packages at run time.

    pip install --no-deps mmcv-lite mmengine mmsegmentation addict yapf rich markdown-it-py mdurl
"""

import ast
import importlib.util
import os

import torch
from torch import nn

__all__ = ["available", "mmcv_nonlocal", "mmcv_context_block", "mmseg_dnl"]


def available(peer: str) -> bool:
    """Whether "mmcv" (mmcv.cnn) or "mmseg" (its dnl_head.py beside mmcv) can be loaded."""
    try:
        import mmcv.cnn  # noqa: F401
    except ImportError:
        return False
    return peer == "mmcv" or importlib.util.find_spec("mmseg") is not None


def mmseg_dnl_class():
    """mmsegmentation's ``DisentangledNonLocal2d``, defined from its installed source file."""
    from mmcv.cnn import NonLocal2d

    spec = importlib.util.find_spec("mmseg")
    path = os.path.join(os.path.dirname(spec.origin), "models", "decode_heads", "dnl_head.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    (node,) = [n for n in tree.body if getattr(n, "name", None) == "DisentangledNonLocal2d"]
    namespace = {"torch": torch, "nn": nn, "NonLocal2d": NonLocal2d}
    exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), namespace)
    return namespace["DisentangledNonLocal2d"]


def _conv_of(module):
    """The conv of an mmcv ConvModule, or of the ConvModule before a sub-sampling max pool."""
    module = module[0] if isinstance(module, nn.Sequential) else module
    return module.conv


def _copy_nonlocal_weights(ours, theirs) -> None:
    with torch.no_grad():
        for name in ("g", "theta", "phi"):
            if hasattr(ours, name):  # the Gaussian mode has no theta and phi
                _conv_of(getattr(theirs, name)).load_state_dict(getattr(ours, name).state_dict())
        theirs.conv_out.conv.load_state_dict(ours.out.state_dict())
        if ours.norm is not None:
            theirs.conv_out.norm.load_state_dict(ours.norm.state_dict())


def _norm_cfg(block):
    if block.norm is None:
        return None
    return {"type": {"BatchNorm2d": "BN", "GroupNorm": "GN"}[type(block.norm).__name__]} | (
        {"num_groups": block.norm.num_groups} if isinstance(block.norm, nn.GroupNorm) else {}
    )


def mmcv_nonlocal(ours):
    """mmcv's ``NonLocal2d`` with the settings and weights of our ``NonLocalBlock2d``."""
    from mmcv.cnn import NonLocal2d

    theirs = NonLocal2d(
        ours.in_channels,
        reduction=ours.in_channels // ours.inner_channels,
        use_scale=ours.use_scale,
        mode=ours.mode,
        sub_sample=ours.sub_sample,
        norm_cfg=_norm_cfg(ours),
    )
    theirs.to(next(ours.parameters()).dtype)
    _copy_nonlocal_weights(ours, theirs)
    return theirs.train(ours.training)


def mmcv_context_block(ours):
    """mmcv's ``ContextBlock`` with the settings and weights of our ``GlobalContextBlock2d``."""
    from mmcv.cnn import ContextBlock

    theirs = ContextBlock(ours.in_channels, ours.ratio, ours.pooling, tuple(ours.fusions))
    theirs.to(next(ours.parameters()).dtype)
    theirs.load_state_dict(ours.state_dict())  # the same submodule names
    return theirs.train(ours.training)


def mmseg_dnl(ours):
    """mmsegmentation's ``DisentangledNonLocal2d`` with our ``DisentangledNonLocal2d``'s weights."""
    theirs = mmseg_dnl_class()(
        ours.in_channels,
        reduction=ours.in_channels // ours.inner_channels,
        use_scale=ours.use_scale,
        mode="embedded_gaussian",
        sub_sample=ours.sub_sample,
        norm_cfg=_norm_cfg(ours),
        temperature=ours.temperature,
    )
    theirs.to(next(ours.parameters()).dtype)
    _copy_nonlocal_weights(ours, theirs)
    with torch.no_grad():
        theirs.conv_mask.load_state_dict(ours.conv_mask.state_dict())
    return theirs.train(ours.training)


def parameter_pairs(ours, theirs):
    """[(name, our parameter, the peer's parameter holding the same weights)]."""
    from nonlocal_det.layers import GlobalContextBlock2d

    if isinstance(ours, GlobalContextBlock2d):  # mmcv's submodule names
        theirs_by_name = dict(theirs.named_parameters())
        return [(n, p, theirs_by_name[n]) for n, p in ours.named_parameters()]
    modules = {
        "g": _conv_of(theirs.g),
        "theta": _conv_of(theirs.theta),
        "phi": _conv_of(theirs.phi),
        "out": theirs.conv_out.conv,
        "norm": getattr(theirs.conv_out, "norm", None),
        "conv_mask": getattr(theirs, "conv_mask", None),
    }
    pairs = []
    for name, p in ours.named_parameters():
        module, _, attr = name.partition(".")
        pairs.append((name, p, getattr(modules[module], attr)))
    return pairs
