"""Detectron2 models with blocks of the non-local family; importing this registers them."""

from .backbone import (
    block_strides,
    build_nonlocal_backbone,
    build_resnet_nl_backbone,
    build_resnet_nl_fpn_backbone,
    find_resnet,
    insert_nonlocal_blocks,
    make_nonlocal_stages,
)
from .block_factory import context_block_factory, nonlocal_block_factory
from .keypoint_head import KRCNNConvDeconvUpsampleNLHead
from .meta_arch import (
    NonLocalGeneralizedRCNN,
    NonLocalPanopticFPN,
    NonLocalRetinaNet,
    NonLocalSemanticSegmentor,
    valid_sizes_in_blocks,
)
from .resnet_blocks import (
    NonLocalBasicBlock,
    NonLocalBottleneckBlock,
    NonLocalDeformBottleneckBlock,
    NonLocalMixin,
    attached_variant,
)

__all__ = [
    "block_strides",
    "build_nonlocal_backbone",
    "build_resnet_nl_backbone",
    "build_resnet_nl_fpn_backbone",
    "find_resnet",
    "insert_nonlocal_blocks",
    "make_nonlocal_stages",
    "context_block_factory",
    "nonlocal_block_factory",
    "KRCNNConvDeconvUpsampleNLHead",
    "NonLocalGeneralizedRCNN",
    "NonLocalRetinaNet",
    "NonLocalSemanticSegmentor",
    "NonLocalPanopticFPN",
    "valid_sizes_in_blocks",
    "NonLocalBasicBlock",
    "NonLocalBottleneckBlock",
    "NonLocalDeformBottleneckBlock",
    "NonLocalMixin",
    "attached_variant",
]
