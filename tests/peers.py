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


def _module_pairs(ours, theirs):
    """[(our module, the peer's module holding the same weights)]."""
    if not hasattr(theirs, "conv_out"):  # mmcv's ContextBlock: our submodule names
        return [(ours, theirs)]
    names = [n for n in ("g", "theta", "phi") if hasattr(ours, n)]  # Gaussian: no theta, phi
    pairs = [(getattr(ours, n), _conv_of(getattr(theirs, n))) for n in names]
    pairs.append((ours.out, theirs.conv_out.conv))
    if ours.norm is not None:
        pairs.append((ours.norm, theirs.conv_out.norm))
    if hasattr(ours, "conv_mask"):
        pairs.append((ours.conv_mask, theirs.conv_mask))
    return pairs


def _with_our_weights(ours, theirs):
    """``theirs`` in our dtype and train/eval mode, holding our weights."""
    theirs.to(next(ours.parameters()).dtype)  # before copying, not to round our weights
    with torch.no_grad():
        for mine, peer in _module_pairs(ours, theirs):
            peer.load_state_dict(mine.state_dict())
    return theirs.train(ours.training)


def _norm_cfg(block):
    if block.norm is None:
        return None
    return {"type": {"BatchNorm2d": "BN", "GroupNorm": "GN"}[type(block.norm).__name__]} | (
        {"num_groups": block.norm.num_groups} if isinstance(block.norm, nn.GroupNorm) else {}
    )


def _nonlocal_peer(cls, ours, **settings):
    """``cls`` (mmcv's ``NonLocal2d`` or a subclass) with our block's settings and weights."""
    theirs = cls(
        ours.in_channels,
        reduction=ours.in_channels // ours.inner_channels,
        use_scale=ours.use_scale,
        mode=ours.mode,  # our DNL's: embedded_gaussian
        sub_sample=ours.sub_sample,
        norm_cfg=_norm_cfg(ours),
        **settings,
    )
    return _with_our_weights(ours, theirs)


def mmcv_nonlocal(ours):
    """mmcv's ``NonLocal2d`` with the settings and weights of our ``NonLocalBlock2d``."""
    from mmcv.cnn import NonLocal2d

    return _nonlocal_peer(NonLocal2d, ours)


def mmcv_context_block(ours):
    """mmcv's ``ContextBlock`` with the settings and weights of our ``GlobalContextBlock2d``."""
    from mmcv.cnn import ContextBlock

    theirs = ContextBlock(ours.in_channels, ours.ratio, ours.pooling, tuple(ours.fusions))
    return _with_our_weights(ours, theirs)


def mmseg_dnl(ours):
    """mmsegmentation's ``DisentangledNonLocal2d`` with our ``DisentangledNonLocal2d``'s weights."""
    return _nonlocal_peer(mmseg_dnl_class(), ours, temperature=ours.temperature)


def parameter_pairs(ours, theirs):
    """[(our parameter, the peer's parameter holding the same weights)]."""
    return [
        (p, peer.get_parameter(name))
        for mine, peer in _module_pairs(ours, theirs)
        for name, p in mine.named_parameters()
    ]
