"""
Non-local blocks in any registered Detectron2 backbone built around Detectron2's ResNet.

``build_nonlocal_backbone`` builds the backbone ``MODEL.NONLOCAL.BACKBONE_NAME`` names (ResNet
for C4 models, ResNet-FPN, RetinaNet's ResNet-FPN with P6/P7, ...), finds its ResNet (the
backbone itself or its ``bottom_up``) and replaces the residual blocks ``MODEL.NONLOCAL.RES2``
... ``RES5`` choose by their non-local variants (``resnet_blocks.py``), rebuilt from
``MODEL.RESNETS`` with the same weights. ``make_nonlocal_stages`` does the same for a
LazyConfig's ``ResNet(stages=...)``. Nothing else of the backbone changes, so its outputs,
names and checkpoint keys are the stock ones plus ``<stage>.<index>.nonlocal_block.*``.
"""

import logging
from typing import Callable, Dict, List, MutableSequence, Sequence

from detectron2.layers import CNNBlockBase, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone import ResNet
from torch import nn

from ..config import PADDING_AWARE_META_ARCHITECTURES
from ..errors import ConfigError
from .block_factory import nonlocal_block_factory
from .resnet_blocks import NonLocalMixin, nonlocal_variant

__all__ = [
    "build_nonlocal_backbone",
    "build_resnet_nl_backbone",
    "build_resnet_nl_fpn_backbone",
    "find_resnet",
    "insert_nonlocal_blocks",
    "make_nonlocal_stages",
    "nonlocal_positions_from_cfg",
    "resnet_block_args_from_cfg",
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


def resnet_block_args_from_cfg(cfg, stage: str) -> Dict:
    """
    The arguments besides in/out channels and stride that Detectron2's ``build_resnet_backbone``
    gives the blocks of ``stage``, read from MODEL.RESNETS.
    """
    resnets = cfg.MODEL.RESNETS
    if resnets.DEPTH in (18, 34):
        return {"norm": resnets.NORM}
    index = STAGE_NAMES.index(stage)
    args = {
        "norm": resnets.NORM,
        "bottleneck_channels": resnets.NUM_GROUPS * resnets.WIDTH_PER_GROUP * 2**index,
        "num_groups": resnets.NUM_GROUPS,
        "stride_in_1x1": resnets.STRIDE_IN_1X1,
        "dilation": resnets.RES5_DILATION if stage == "res5" else 1,
    }
    if resnets.DEFORM_ON_PER_STAGE[index]:
        args.update(
            deform_modulated=resnets.DEFORM_MODULATED, deform_num_groups=resnets.DEFORM_NUM_GROUPS
        )
    return args


def _resolve_indices(stage: str, indices: Sequence[int], num_blocks: int, key: str) -> List[int]:
    resolved = []
    for index in indices:
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not -num_blocks <= index < num_blocks
        ):
            raise ConfigError(
                f"{key} = {list(indices)}: block index {index!r} does not exist; {stage} has "
                f"{num_blocks} blocks, so indices must be in [{-num_blocks}, {num_blocks - 1}]"
            )
        resolved.append(index % num_blocks)
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"{key} = {list(indices)} names the same block twice")
    return sorted(resolved)


def insert_nonlocal_blocks(
    stages: Dict[str, MutableSequence[CNNBlockBase]],
    positions: Dict[str, Sequence[int]],
    nonlocal_block: Callable[[int], nn.Module],
    block_args: Callable[[str], Dict],
    *,
    key_of: Callable[[str], str],
    source: str,
) -> List[str]:
    """
    Replace chosen residual blocks, in place, by their non-local variants (``nonlocal_variant``).

    Args:
        stages: {"res2": blocks, ...}: a ResNet's stages (``nn.Sequential``) or the lists of
            blocks it is built from.
        positions: {"res4": [-2], ...}: indices of the blocks after which a non-local block
            runs; negative indices count from the stage's end.
        nonlocal_block: ``channels -> nn.Module``, e.g. ``nonlocal_block_factory(cfg)``.
        block_args: ``stage -> arguments`` the stage's blocks were built with, besides in/out
            channels and stride.
        key_of: ``stage -> the name of its positions`` in errors (``"MODEL.NONLOCAL.RES4"``).
        source: where ``block_args`` come from, for errors.

    Returns:
        The names of the replaced blocks, e.g. ``["res4.21"]``.
    """
    for stage, indices in positions.items():
        if stage not in STAGE_NAMES:
            raise ConfigError(
                f"Unknown stage {stage!r} in non-local positions; expected one of {STAGE_NAMES}"
            )
        if stage not in stages:
            raise ConfigError(
                f"{key_of(stage)} = {list(indices)} places non-local blocks in {stage}, but this "
                f"ResNet builds only {list(stages)} (in C4 models res5 is part of the RoI head). "
                f"Clear {key_of(stage)} or output a later stage (MODEL.RESNETS.OUT_FEATURES)."
            )
    replaced = []
    for stage, indices in positions.items():
        blocks = stages[stage]
        for index in _resolve_indices(stage, indices, len(blocks), key_of(stage)):
            where = f"{stage}.{index}"
            blocks[index] = nonlocal_variant(
                blocks[index],
                nonlocal_block(blocks[index].out_channels),
                block_args(stage),
                where=where,
                source=source,
            )
            replaced.append(where)
    return replaced


def find_resnet(backbone: nn.Module) -> ResNet:
    """
    The Detectron2 ResNet of a backbone: the backbone itself or its ``bottom_up`` (FPN); else None.
    """
    for module in (backbone, getattr(backbone, "bottom_up", None)):
        if isinstance(module, ResNet):
            return module
    return None


_NONLOCAL_BACKBONES = (
    "build_nonlocal_backbone",
    "build_resnet_nl_backbone",
    "build_resnet_nl_fpn_backbone",
)


def _head_features(cfg) -> List[str]:
    """The backbone outputs the config's heads read."""
    if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE:
        return list(cfg.MODEL.RETINANET.IN_FEATURES)
    return list(dict.fromkeys([*cfg.MODEL.RPN.IN_FEATURES, *cfg.MODEL.ROI_HEADS.IN_FEATURES]))


def _backbone_for(features: List[str], meta_architecture: str) -> str:
    if "RetinaNet" in meta_architecture:
        return "build_retinanet_resnet_fpn_backbone"
    if all(f.startswith("res") for f in features):
        return "build_resnet_backbone"
    return "build_resnet_fpn_backbone"


def _build_for_the_heads(
    cfg, input_shape: ShapeSpec, backbone_name: str, name_key: str
) -> Backbone:
    """
    The backbone ``backbone_name`` builds; if it cannot be built from this config (a C4 config
    with the default FPN backbone: an assertion inside Detectron2's FPN), a ConfigError naming
    the key and the value the config's heads need.
    """
    try:
        return BACKBONE_REGISTRY.get(backbone_name)(cfg, input_shape)
    except (AssertionError, KeyError) as e:
        error = head_feature_mismatch(cfg, None, f"cannot be built ({type(e).__name__}: {e})")
        if error is None:
            raise
        raise error from None


def head_feature_mismatch(cfg, backbone=None, detail: str = None):
    """
    A ConfigError when the non-local backbone of ``cfg`` (built now unless given) lacks outputs
    its heads read (a RetinaNet config with the default FPN backbone has no p7), naming
    MODEL.NONLOCAL.BACKBONE_NAME and the value to use; None when they fit or the backbone is not
    a non-local one.
    """
    if cfg.MODEL.BACKBONE.NAME not in _NONLOCAL_BACKBONES:
        return None
    name = (
        cfg.MODEL.NONLOCAL.BACKBONE_NAME
        if cfg.MODEL.BACKBONE.NAME == "build_nonlocal_backbone"
        else {
            "build_resnet_nl_backbone": "build_resnet_backbone",
            "build_resnet_nl_fpn_backbone": "build_resnet_fpn_backbone",
        }[cfg.MODEL.BACKBONE.NAME]
    )
    features = _head_features(cfg)
    suggested = _backbone_for(features, cfg.MODEL.META_ARCHITECTURE)
    if detail is None:
        from detectron2.modeling import build_backbone

        outputs = list((backbone or build_backbone(cfg)).output_shape())
        missing = [f for f in features if f not in outputs]
        if not missing:
            return None
        detail = f"builds the outputs {outputs}, without {missing}"
    fix = (
        f"set MODEL.NONLOCAL.BACKBONE_NAME {suggested!r}"
        if suggested != name
        else "check the heads' IN_FEATURES keys"
    )
    return ConfigError(
        f"MODEL.NONLOCAL.BACKBONE_NAME={name!r} {detail}; this config's heads read {features} "
        f"(MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}): {fix}."
    )


def _warn_if_padding_not_masked(cfg) -> None:
    meta_architecture = cfg.MODEL.META_ARCHITECTURE
    if (
        cfg.MODEL.NONLOCAL.MASK_PADDING
        and meta_architecture not in PADDING_AWARE_META_ARCHITECTURES
    ):
        stock_to_ours = {
            "GeneralizedRCNN": "NonLocalGeneralizedRCNN",
            "RetinaNet": "NonLocalRetinaNet",
        }
        ours = stock_to_ours.get(meta_architecture, "NonLocalGeneralizedRCNN")
        logger.warning(
            "MODEL.NONLOCAL.MASK_PADDING is True, but "
            f"MODEL.META_ARCHITECTURE={meta_architecture!r} "
            "does not pass the images' valid sizes to the non-local blocks: they attend over the "
            "padded map, so an image's detections depend on its batch-mates. Set "
            f"MODEL.META_ARCHITECTURE={ours!r}, "
            "or MODEL.NONLOCAL.MASK_PADDING False to attend over the padding on purpose."
        )


def _build_nonlocal_backbone(
    cfg, input_shape: ShapeSpec, backbone_name: str, name_key: str
) -> Backbone:
    if backbone_name in _NONLOCAL_BACKBONES:
        raise ConfigError(
            f"{name_key}={backbone_name!r} is a non-local backbone itself; name the Detectron2 "
            "backbone to add blocks to, e.g. 'build_resnet_fpn_backbone'."
        )
    if backbone_name not in BACKBONE_REGISTRY:
        raise ConfigError(
            f"{name_key}={backbone_name!r} is not a registered backbone; registered: "
            f"{sorted(name for name, _ in BACKBONE_REGISTRY)}"
        )
    nonlocal_block = nonlocal_block_factory(cfg)  # checks MODEL.NONLOCAL before anything is built
    _warn_if_padding_not_masked(cfg)
    backbone = _build_for_the_heads(cfg, input_shape, backbone_name, name_key)
    resnet = find_resnet(backbone)
    if resnet is None:
        raise ConfigError(
            f"{name_key}={backbone_name!r} builds a {type(backbone).__name__} with no Detectron2 "
            "ResNet "
            "(neither the backbone nor its bottom_up); non-local blocks attach to ResNet stages."
        )
    replaced = insert_nonlocal_blocks(
        dict(zip(resnet.stage_names, resnet.stages)),
        nonlocal_positions_from_cfg(cfg),
        nonlocal_block,
        lambda stage: resnet_block_args_from_cfg(cfg, stage),
        key_of=lambda stage: f"MODEL.NONLOCAL.{stage.upper()}",
        source="MODEL.RESNETS",
    )
    for where in replaced:
        stage, index = where.split(".")
        block = getattr(resnet, stage)[int(index)]
        frozen = not any(p.requires_grad for p in block.parameters())
        state = (
            f"FROZEN with its stage (FREEZE_AT={cfg.MODEL.BACKBONE.FREEZE_AT})"
            if frozen
            else "trainable"
        )
        logger.info(
            f"Non-local block {type(block.nonlocal_block).__name__} ({block.out_channels} "
            "channels) "
            f"after {where}: {state}"
        )
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
    """``build_nonlocal_backbone`` around ``build_resnet_backbone``, whatever BACKBONE_NAME says."""
    return _build_nonlocal_backbone(
        cfg, input_shape, "build_resnet_backbone", "build_resnet_nl_backbone wraps"
    )


@BACKBONE_REGISTRY.register()
def build_resnet_nl_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """
    ``build_nonlocal_backbone`` around ``build_resnet_fpn_backbone``, whatever BACKBONE_NAME says.
    """
    return _build_nonlocal_backbone(
        cfg, input_shape, "build_resnet_fpn_backbone", "build_resnet_nl_fpn_backbone wraps"
    )


def make_nonlocal_stages(
    depth: int,
    *,
    nonlocal_positions: Dict[str, Sequence[int]],
    nonlocal_block: Callable[[int], nn.Module],
    block_class=None,
    **kwargs,
) -> List[List[CNNBlockBase]]:
    """
    ``ResNet.make_default_stages`` with non-local blocks, for a LazyConfig's
    ``L(ResNet)(stages=L(make_nonlocal_stages)(...))``.

    Args:
        depth, block_class, kwargs: as for ``ResNet.make_default_stages``.
        nonlocal_positions: {"res4": [-2], ...}, as in ``insert_nonlocal_blocks``.
        nonlocal_block: ``channels -> nn.Module``, e.g.
            ``L(nonlocal_block_factory)(block="NL", mode="embedded_gaussian", norm="GN")``.

    Returns:
        list of stages, for ``ResNet(stem, stages, ...)``, whose ``freeze_at`` freezes a frozen
        stage's non-local blocks with it.
    """
    stages = ResNet.make_default_stages(depth, block_class=block_class, **kwargs)

    def block_args(stage):
        if depth < 50:
            return kwargs
        # make_default_stages' bottleneck width: a quarter of the stage's output channels
        return {
            **kwargs,
            "bottleneck_channels": stages[STAGE_NAMES.index(stage)][0].out_channels // 4,
        }

    replaced = insert_nonlocal_blocks(
        dict(zip(STAGE_NAMES, stages)),
        nonlocal_positions,
        nonlocal_block,
        block_args,
        key_of=lambda stage: f"nonlocal_positions[{stage!r}]",
        source="make_nonlocal_stages' arguments",
    )
    logger.info(f"Non-local blocks after {', '.join(replaced)}")
    return stages


def has_nonlocal(block: nn.Module) -> bool:
    """Whether a residual block runs a non-local block after itself."""
    return isinstance(block, NonLocalMixin)
