"""
nonlocal_det: non-local (Wang et al., CVPR 2018), compact generalized non-local (Yue et al., NeurIPS
2018), global context (Cao et al., 2019) and disentangled non-local (Yin et al., ECCV 2020) blocks
for Detectron2. The library: ``nonlocal_det.layers`` (the blocks; needs only torch),
``nonlocal_det.modeling`` (Detectron2 backbones, keypoint head and meta-architectures with the
blocks), ``nonlocal_det.config`` (``add_nonlocal_config``) and ``nonlocal_det.errors``. Names that
build Detectron2 models need Detectron2; without it, using them raises an ImportError that says how
to install it. The training harness (train_net.py, the generated datasets, the checks, the tools'
code) is ``nonlocal_det.harness``, which builds on the library; the library never imports it.
"""

import importlib

from .errors import detectron2_available, require_detectron2
from .layers import CGNLBlock2d, DisentangledNonLocal2d, GlobalContextBlock2d, NonLocalBlock2d

__version__ = "0.1.0"

# Detectron2-dependent public names -> the submodule that defines them.
_DETECTRON2_EXPORTS = {
    "add_nonlocal_config": ".config",
    "build_nonlocal_backbone": ".modeling",
    "build_resnet_nl_backbone": ".modeling",
    "build_resnet_nl_fpn_backbone": ".modeling",
    "KRCNNConvDeconvUpsampleNLHead": ".modeling",
    "make_nonlocal_stages": ".modeling",
    "insert_nonlocal_blocks": ".modeling",
    "nonlocal_block_factory": ".modeling",
    "context_block_factory": ".modeling",
}

if detectron2_available():
    # Registers the backbones, the keypoint head and the meta-architectures with Detectron2; the
    # names above are then read from these modules by __getattr__.
    from . import config, modeling


def __getattr__(name):
    if name in _DETECTRON2_EXPORTS:
        require_detectron2(f"nonlocal_det.{name}")
        return getattr(importlib.import_module(_DETECTRON2_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "NonLocalBlock2d",
    "CGNLBlock2d",
    "DisentangledNonLocal2d",
    "GlobalContextBlock2d",
    "detectron2_available",
    "require_detectron2",
    *_DETECTRON2_EXPORTS,
]
