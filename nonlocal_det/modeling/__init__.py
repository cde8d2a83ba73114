"""Detectron2 models with non-local blocks; importing this registers them."""

from .backbone import (
    build_nonlocal_backbone,
    build_resnet_nl_backbone,
    build_resnet_nl_fpn_backbone,
    find_resnet,
    has_nonlocal,
    insert_nonlocal_blocks,
    make_nonlocal_stages,
    nonlocal_positions_from_cfg,
    resnet_block_args_from_cfg,
)
from .block_factory import nonlocal_block_factory
from .keypoint_head import KRCNNConvDeconvUpsampleNLHead
from .meta_arch import NonLocalGeneralizedRCNN, NonLocalRetinaNet, valid_sizes_in_blocks
from .resnet_blocks import (
    NonLocalBasicBlock,
    NonLocalBottleneckBlock,
    NonLocalDeformBottleneckBlock,
    NonLocalMixin,
)

__all__ = [
    "build_nonlocal_backbone",
    "build_resnet_nl_backbone",
    "build_resnet_nl_fpn_backbone",
    "find_resnet",
    "has_nonlocal",
    "insert_nonlocal_blocks",
    "make_nonlocal_stages",
    "nonlocal_positions_from_cfg",
    "resnet_block_args_from_cfg",
    "nonlocal_block_factory",
    "KRCNNConvDeconvUpsampleNLHead",
    "NonLocalGeneralizedRCNN",
    "NonLocalRetinaNet",
    "valid_sizes_in_blocks",
    "NonLocalBasicBlock",
    "NonLocalBottleneckBlock",
    "NonLocalDeformBottleneckBlock",
    "NonLocalMixin",
]
