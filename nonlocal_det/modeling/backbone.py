"""Non-local ResNet and ResNet-FPN backbones, registered in Detectron2's BACKBONE_REGISTRY."""
import functools
import logging
from typing import Callable, Dict, List, Sequence

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn


from ..layers import CGNLBlock2d, NonLocalBlock2d
from .attach import attach_nonlocal
from .block_factory import nonlocal_block_factory

__all__ = [
    "nonlocal_block_builder",
    "build_resnet_nl_backbone",
    "build_resnet_nl_fpn_backbone",
    "insert_nonlocal_blocks",
    "make_nonlocal_stages",
    "nonlocal_positions_from_cfg",
]

logger = logging.getLogger(__name__)
STAGE_NAMES = ("res2", "res3", "res4", "res5")


def nonlocal_positions_from_cfg(cfg) -> Dict[str, List[int]]:
    """{stage name: block indices} from MODEL.NONLOCAL.RES2..RES5 (empty stages left out)."""
    positions = {}
    for stage in STAGE_NAMES:
        indices = list(cfg.MODEL.NONLOCAL[stage.upper()])
        if indices:
            positions[stage] = indices
    return positions


def _resolve_indices(stage: str, indices: Sequence[int], num_blocks: int, key: str) -> List[int]:
    resolved = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not -num_blocks <= index < num_blocks:
            raise ValueError(
                f"{key} = {list(indices)}: block index {index!r} does not exist; {stage} has "
                f"{num_blocks} blocks, so indices must be in [{-num_blocks}, {num_blocks - 1}]"
            )
        resolved.append(index % num_blocks)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"{key} = {list(indices)} names the same block twice")
    return sorted(resolved)


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad = False
    FrozenBatchNorm2d.convert_frozen_batchnorm(module)


def insert_nonlocal_blocks(
    resnet: ResNet,
    positions: Dict[str, Sequence[int]],
    make_block: Callable[[int], nn.Module],
    *,
    freeze_at: int = 0,
    key_prefix: str = "MODEL.NONLOCAL.",
) -> ResNet:
    """
    Attach a non-local block after each chosen residual block of a built ResNet, in place.

    Args:
        resnet: a Detectron2 ResNet (any depth, any block type).
        positions: {"res4": [-2], ...}: indices of the blocks after which a non-local
            block runs; negative indices count from the stage's end.
        make_block: ``channels -> nn.Module``.
        freeze_at: the ResNet's FREEZE_AT; blocks in frozen stages are frozen too.
        key_prefix: prefix of the config keys named in errors.

    No existing parameter is renamed: the block after ``res4.21`` lives at
    ``res4.21.nonlocal_block``.
    """
    built = dict(zip(resnet.stage_names, resnet.stages))
    for stage, indices in positions.items():
        key = f"{key_prefix}{stage.upper()}"
        if stage not in STAGE_NAMES:
            raise ValueError(f"Unknown stage {stage!r} in non-local positions; expected one of {STAGE_NAMES}")
        if stage not in built:
            raise ValueError(
                f"{key} = {list(indices)} places non-local blocks in {stage}, but this ResNet "
                f"builds only {list(built)} (MODEL.RESNETS.OUT_FEATURES = {resnet._out_features}). "
                f"Clear {key} or output a later stage."
            )
    for stage, indices in positions.items():
        blocks = built[stage]
        stage_frozen = freeze_at >= STAGE_NAMES.index(stage) + 2
        for index in _resolve_indices(stage, indices, len(blocks), f"{key_prefix}{stage.upper()}"):
            block = blocks[index]
            nonlocal_block = make_block(block.out_channels)
            if stage_frozen:
                _freeze(nonlocal_block)
            attach_nonlocal(block, nonlocal_block)
            logger.info(
                f"Non-local block {type(nonlocal_block).__name__} ({block.out_channels} channels) "
                f"after {stage}.{index}: {'FROZEN with its stage (FREEZE_AT=%d)' % freeze_at if stage_frozen else 'trainable'}"
            )
    return resnet


@BACKBONE_REGISTRY.register()
def build_resnet_nl_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Detectron2's ResNet (``build_resnet_backbone``) with non-local blocks from MODEL.NONLOCAL."""
    resnet = build_resnet_backbone(cfg, input_shape)
    return insert_nonlocal_blocks(
        resnet,
        nonlocal_positions_from_cfg(cfg),
        nonlocal_block_factory(cfg),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


@BACKBONE_REGISTRY.register()
def build_resnet_nl_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's ResNet-FPN (``build_resnet_fpn_backbone``) with non-local blocks in its ResNet."""
    fpn = build_resnet_fpn_backbone(cfg, input_shape)
    insert_nonlocal_blocks(
        fpn.bottom_up,
        nonlocal_positions_from_cfg(cfg),
        nonlocal_block_factory(cfg),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
    return fpn


def nonlocal_block_builder(block: str = "NL", **kwargs) -> Callable[[int], nn.Module]:
    """
    ``channels -> block`` with keyword arguments fixed, for LazyConfig (whose calls take
    keywords only): ``L(nonlocal_block_builder)(block="NL", mode="embedded_gaussian", norm="GN")``.
    ``block`` is "NL" (``NonLocalBlock2d``) or "CGNL" (``CGNLBlock2d``); kwargs go to it.
    """
    classes = {"NL": NonLocalBlock2d, "CGNL": CGNLBlock2d}
    if block not in classes:
        raise ValueError(f"block={block!r} is not one of {tuple(classes)}")
    return functools.partial(classes[block], **kwargs)


def make_nonlocal_stages(
    depth: int,
    *,
    nonlocal_positions: Dict[str, Sequence[int]],
    nonlocal_block: Callable[[int], nn.Module],
    block_class=None,
    **kwargs,
) -> List[List[nn.Module]]:
    """
    Drop-in for ``ResNet.make_default_stages`` (LazyConfig) that attaches non-local blocks.

    Args:
        depth, block_class, kwargs: as for ``ResNet.make_default_stages``.
        nonlocal_positions: {"res4": [-2], ...}, as in ``insert_nonlocal_blocks``.
        nonlocal_block: ``channels -> nn.Module``, e.g.
            ``functools.partial(NonLocalBlock2d, mode="embedded_gaussian", norm="GN")``.

    Returns:
        list of stages, for ``ResNet(stem, stages, ...)``. ``ResNet``'s ``freeze_at``
        freezes a frozen stage's non-local blocks with it.
    """
    stages = ResNet.make_default_stages(depth, block_class=block_class, **kwargs)
    for stage, indices in nonlocal_positions.items():
        if stage not in STAGE_NAMES:
            raise ValueError(f"Unknown stage {stage!r} in nonlocal_positions; expected one of {STAGE_NAMES}")
        blocks = stages[STAGE_NAMES.index(stage)]
        for index in _resolve_indices(stage, indices, len(blocks), f"nonlocal_positions[{stage!r}]"):
            attach_nonlocal(blocks[index], nonlocal_block(blocks[index].out_channels))
    return stages
