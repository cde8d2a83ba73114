"""
Blocks of the non-local family in any registered Detectron2 backbone built around Detectron2's
ResNet (ResNet for C4 models, ResNet-FPN, RetinaNet's ResNet-FPN with P6/P7, ...): the residual
blocks that get a block are rebuilt, with their weights, as their variants (``resnet_blocks.py``).
``make_nonlocal_stages`` does the same for a LazyConfig's ``ResNet(stages=...)`` and
``insert_nonlocal_blocks`` for any ResNet's stages. Nothing else of the backbone changes, so its
outputs, names and checkpoint keys are the stock ones plus ``<stage>.<index>.nonlocal_block.*`` /
``.context_block.*``.
"""

import logging
from typing import Callable, Dict, List, MutableSequence, Optional, Sequence

from detectron2.layers import CNNBlockBase, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone import ResNet
from torch import nn

from ..errors import ConfigError
from .block_factory import context_block_factory, nonlocal_block_factory
from .resnet_blocks import NONLOCAL_VARIANTS, attached_variant

logger = logging.getLogger(__name__)
STAGE_NAMES = ("res2", "res3", "res4", "res5")


def nonlocal_positions_from_cfg(cfg) -> Dict[str, List[int]]:
    """{stage name: block indices} from MODEL.NONLOCAL.RES2..RES5 (empty stages left out)."""
    nl = cfg.MODEL.NONLOCAL
    return {stage: list(nl[stage.upper()]) for stage in STAGE_NAMES if nl[stage.upper()]}


def _resolve_indices(stage: str, indices: Sequence[int], n: int, key: str) -> List[int]:
    """``indices`` of a stage of ``n`` blocks, each checked and made non-negative, sorted."""
    resolved = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            raise ConfigError(
                f"{key} = {list(indices)}: block index {index!r} does not exist; {stage} has "
                f"{n} blocks, so indices must be in [{-n}, {n - 1}]"
            )
        resolved.append(index % n)
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"{key} = {list(indices)} names the same block twice")
    return sorted(resolved)


def _check_stages(stages, wanted: Sequence[str], key: str, value) -> None:
    for stage in wanted:
        if stage not in STAGE_NAMES:
            raise ConfigError(
                f"{key} = {value}: unknown stage {stage!r}; expected one of {STAGE_NAMES}"
            )
        if stage not in stages:
            raise ConfigError(
                f"{key} = {value} places blocks in {stage}, but this ResNet builds only "
                f"{list(stages)} (in C4 models res5 is part of the RoI head). Leave {stage} out of "
                f"{key} or output a later stage (MODEL.RESNETS.OUT_FEATURES)."
            )


def insert_nonlocal_blocks(
    stages: Dict[str, MutableSequence[CNNBlockBase]],
    positions: Dict[str, Sequence[int]],
    nonlocal_block: Optional[Callable[[int], nn.Module]],
    *,
    context_stages: Sequence[str] = (),
    context_block: Optional[Callable[[int], nn.Module]] = None,
    key_of: Callable[[str], str] = lambda stage: f"positions[{stage!r}]",
    context_key: str = "context_stages",
) -> List[str]:
    """
    Rebuild, in place, the residual blocks that get a block as their variants
    (``attached_variant``): a non-local block after the blocks ``positions`` name, a context
    (GC) block inside every block of ``context_stages``. Returns the names of the rebuilt blocks,
    e.g. ``["res4.21"]``.

    Args:
        stages: {"res2": blocks, ...}: a ResNet's stages (``nn.Sequential``) or the lists of
            blocks it is built from.
        positions: {"res4": [-2], ...}: indices of the blocks after which a non-local block
            runs; negative indices count from the stage's end.
        nonlocal_block: ``channels -> nn.Module``, e.g. ``nonlocal_block_factory(cfg)``.
        context_stages: stages in every residual block of which a context block runs.
        context_block: ``channels -> nn.Module``, e.g. ``context_block_factory(cfg)``.
        key_of, context_key: the names of the positions and of the context stages in errors
            (``"MODEL.NONLOCAL.RES4"``, ``"MODEL.NONLOCAL.GC.STAGES"``).
    """
    for stage, indices in positions.items():
        _check_stages(stages, [stage], key_of(stage), list(indices))
    _check_stages(stages, context_stages, context_key, list(context_stages))
    chosen: Dict[str, Dict[int, set]] = {}  # {stage: {index: {"nonlocal", "context"}}}
    for stage, indices in positions.items():
        for index in _resolve_indices(stage, indices, len(stages[stage]), key_of(stage)):
            chosen.setdefault(stage, {})[index] = {"nonlocal"}
    for stage in context_stages:
        for index in range(len(stages[stage])):
            chosen.setdefault(stage, {}).setdefault(index, set()).add("context")
    extendable = [
        name for name, blocks in stages.items() if all(type(b) in NONLOCAL_VARIANTS for b in blocks)
    ]
    replaced = []
    for stage, indices in chosen.items():
        blocks = stages[stage]
        for index in sorted(indices):
            where = f"{stage}.{index}"
            block = blocks[index]
            if type(block) not in NONLOCAL_VARIANTS:
                keys = [key_of(stage)] if stage in positions else []
                keys += [context_key] if stage in context_stages else []
                resnet = any(isinstance(b, CNNBlockBase) for bs in stages.values() for b in bs)
                takers = (
                    f"Stages of this ResNet that take them: {extendable or 'none'}."
                    if resnet
                    else "These stages are not a ResNet's (no block is a CNNBlockBase)."
                )
                raise ConfigError(
                    f"{' and '.join(keys)} place blocks in {stage}, whose block {where} is a "
                    f"{type(block).__module__}.{type(block).__qualname__}: the non-local family "
                    f"attaches to Detectron2's {', '.join(c.__name__ for c in NONLOCAL_VARIANTS)}. "
                    + takers
                )
            kinds = indices[index]
            blocks[index] = attached_variant(
                block,
                nonlocal_block=nonlocal_block(block.out_channels) if "nonlocal" in kinds else None,
                context_block=context_block(block.out_channels) if "context" in kinds else None,
                where=where,
            )
            replaced.append(where)
    return replaced


def block_strides(resnet: ResNet) -> Dict[nn.Module, int]:
    """
    Each residual block of ``resnet`` -> the stride of its output grid on the input image: the
    one place the stride of a block (and of the blocks attached to it) is computed.
    """
    strides, stride = {}, resnet.stem.stride
    for stage in resnet.stages:
        for block in stage:
            stride *= block.stride
            strides[block] = stride
    return strides


def find_resnet(backbone: nn.Module) -> ResNet:
    """The backbone's Detectron2 ResNet: itself or its ``bottom_up`` (FPN); else None."""
    for module in (backbone, getattr(backbone, "bottom_up", None)):
        if isinstance(module, ResNet):
            return module
    return None


def _build_nonlocal_backbone(
    cfg, input_shape: ShapeSpec, backbone_name: str, name_key: str
) -> Backbone:
    if backbone_name not in BACKBONE_REGISTRY:
        raise ConfigError(
            f"{name_key}={backbone_name!r} is not a registered backbone; registered: "
            f"{sorted(name for name, _ in BACKBONE_REGISTRY)}"
        )
    if BACKBONE_REGISTRY.get(backbone_name).__module__ == __name__:  # one of the builders below
        raise ConfigError(
            f"{name_key}={backbone_name!r} is a non-local backbone itself; name the Detectron2 "
            "backbone to add blocks to, e.g. 'build_resnet_fpn_backbone'."
        )
    # every MODEL.NONLOCAL value is checked before anything is built
    positions = nonlocal_positions_from_cfg(cfg)
    nonlocal_block = nonlocal_block_factory(cfg)
    context_stages = list(cfg.MODEL.NONLOCAL.GC.STAGES)
    context_block = context_block_factory(cfg)
    backbone = BACKBONE_REGISTRY.get(backbone_name)(cfg, input_shape)
    resnet = find_resnet(backbone)
    if resnet is None:
        raise ConfigError(
            f"{name_key}={backbone_name!r} builds a {type(backbone).__name__} with no Detectron2 "
            "ResNet (neither the backbone nor its bottom_up); the blocks attach to ResNet stages."
        )
    replaced = insert_nonlocal_blocks(
        dict(zip(resnet.stage_names, resnet.stages)),
        positions,
        nonlocal_block,
        context_stages=context_stages,
        context_block=context_block,
        key_of=lambda stage: f"MODEL.NONLOCAL.{stage.upper()}",
        context_key="MODEL.NONLOCAL.GC.STAGES",
    )
    logger.info(f"Blocks of the non-local family in {', '.join(replaced)}")
    return backbone


@BACKBONE_REGISTRY.register()
def build_nonlocal_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """
    The backbone MODEL.NONLOCAL.BACKBONE_NAME builds (any registered builder whose backbone is,
    or has as ``bottom_up``, a Detectron2 ResNet built from MODEL.RESNETS), with the non-local
    blocks of MODEL.NONLOCAL after the residual blocks MODEL.NONLOCAL.RES2..RES5 name.
    """
    return _build_nonlocal_backbone(
        cfg, input_shape, cfg.MODEL.NONLOCAL.BACKBONE_NAME, "MODEL.NONLOCAL.BACKBONE_NAME"
    )


@BACKBONE_REGISTRY.register()
def build_resnet_nl_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """``build_nonlocal_backbone`` around ``build_resnet_backbone``, ignoring BACKBONE_NAME."""
    return _build_nonlocal_backbone(
        cfg, input_shape, "build_resnet_backbone", "build_resnet_nl_backbone wraps"
    )


@BACKBONE_REGISTRY.register()
def build_resnet_nl_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """``build_nonlocal_backbone`` around ``build_resnet_fpn_backbone``, ignoring BACKBONE_NAME."""
    return _build_nonlocal_backbone(
        cfg, input_shape, "build_resnet_fpn_backbone", "build_resnet_nl_fpn_backbone wraps"
    )


def make_nonlocal_stages(
    depth: int,
    *,
    nonlocal_positions: Dict[str, Sequence[int]],
    nonlocal_block: Optional[Callable[[int], nn.Module]] = None,
    context_stages: Sequence[str] = (),
    context_block: Optional[Callable[[int], nn.Module]] = None,
    block_class=None,
    **kwargs,
) -> List[List[CNNBlockBase]]:
    """
    ``ResNet.make_default_stages`` with blocks of the non-local family, for a LazyConfig's
    ``L(ResNet)(stages=L(make_nonlocal_stages)(...))``; ``ResNet``'s ``freeze_at`` freezes a
    frozen stage's attached blocks with it.

    Args:
        depth, block_class, kwargs: as for ``ResNet.make_default_stages``.
        nonlocal_positions, nonlocal_block, context_stages, context_block: as in
            ``insert_nonlocal_blocks``; e.g. ``nonlocal_positions={"res4": [-2]}``,
            ``nonlocal_block=L(nonlocal_block_factory)(block="NL", norm="GN")``.
    """
    stages = ResNet.make_default_stages(depth, block_class=block_class, **kwargs)
    replaced = insert_nonlocal_blocks(
        dict(zip(STAGE_NAMES, stages)),
        nonlocal_positions,
        nonlocal_block,
        context_stages=context_stages,
        context_block=context_block,
        key_of=lambda stage: f"nonlocal_positions[{stage!r}]",
    )
    logger.info(f"Blocks of the non-local family in {', '.join(replaced)}")
    return stages
