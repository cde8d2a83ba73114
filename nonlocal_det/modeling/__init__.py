"""Detectron2 models with non-local blocks; importing this registers them."""
from .attach import attach_nonlocal, has_nonlocal
from .backbone import (
    build_resnet_nl_backbone,
    build_resnet_nl_fpn_backbone,
    insert_nonlocal_blocks,
    make_nonlocal_stages,
    nonlocal_block_builder,
    nonlocal_positions_from_cfg,
)
from .block_factory import nonlocal_block_factory
from .keypoint_head import KRCNNConvDeconvUpsampleNLHead

__all__ = [
    "attach_nonlocal",
    "has_nonlocal",
    "build_resnet_nl_backbone",
    "build_resnet_nl_fpn_backbone",
    "insert_nonlocal_blocks",
    "make_nonlocal_stages",
    "nonlocal_block_builder",
    "nonlocal_positions_from_cfg",
    "nonlocal_block_factory",
    "KRCNNConvDeconvUpsampleNLHead",
]
