"""
What a config with non-local blocks needs from the model around them, read from the keys the model
reads; a config that does not fit gets one line naming the key and the value that builds its model.
"""

import logging
from contextlib import contextmanager, suppress
from typing import List, Optional

from nonlocal_det.errors import ConfigError
from nonlocal_det.modeling.meta_arch import VALID_REGION_META_ARCHITECTURES

from .config_rules import lookup

logger = logging.getLogger(__name__)

# Detectron2's meta-architectures (and the projects') -> the config keys naming the backbone
# outputs their heads read. Ours read what the Detectron2 one they extend reads.
HEAD_FEATURE_KEYS = {
    "GeneralizedRCNN": ("MODEL.RPN.IN_FEATURES", "MODEL.ROI_HEADS.IN_FEATURES"),
    "ProposalNetwork": ("MODEL.RPN.IN_FEATURES",),
    "RetinaNet": ("MODEL.RETINANET.IN_FEATURES",),
    "SemanticSegmentor": ("MODEL.SEM_SEG_HEAD.IN_FEATURES",),
    "PanopticFPN": (
        "MODEL.RPN.IN_FEATURES",
        "MODEL.ROI_HEADS.IN_FEATURES",
        "MODEL.SEM_SEG_HEAD.IN_FEATURES",
    ),
    "PanopticDeepLab": ("MODEL.SEM_SEG_HEAD.IN_FEATURES", "MODEL.INS_EMBED_HEAD.IN_FEATURES"),
}

# Builders that wrap a Detectron2 ResNet -> what the blocks' backbone keys are named in errors.
NONLOCAL_BACKBONES = {
    "build_nonlocal_backbone": None,  # wraps MODEL.NONLOCAL.BACKBONE_NAME
    "build_resnet_nl_backbone": "build_resnet_backbone",
    "build_resnet_nl_fpn_backbone": "build_resnet_fpn_backbone",
}
# Builders whose network the advice can name from the config's keys.
KNOWN_BUILDERS = (
    "build_resnet_backbone",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
    "build_resnet_deeplab_backbone",
    "build_trident_resnet_backbone",
)


def _stock(meta_architecture: str) -> str:
    return VALID_REGION_META_ARCHITECTURES.get(meta_architecture, meta_architecture)


def head_features(cfg) -> Optional[List[str]]:
    """The backbone outputs the config's heads read; None for a meta-architecture not known."""
    keys = HEAD_FEATURE_KEYS.get(_stock(cfg.MODEL.META_ARCHITECTURE))
    if keys is None:
        return None
    return list(dict.fromkeys(f for key in keys for f in lookup(cfg, key, [])))


def described_resnet_builder(cfg):
    """(builder, why) of the ResNet the config's keys describe, or (None, why): a project's own keys
    first, then the heads' inputs: res* for C4 or dilated, RetinaNet's p6/p7, else FPN levels."""
    stem, grid = cfg.MODEL.RESNETS.get("STEM_TYPE"), cfg.MODEL.RESNETS.get("RES5_MULTI_GRID")
    if stem == "deeplab" or (grid is not None and list(grid) not in ([1], [1, 1, 1])):
        why = f"MODEL.RESNETS.STEM_TYPE={stem!r}, RES5_MULTI_GRID={list(grid or [])}"
        return "build_resnet_deeplab_backbone", why
    if "TRIDENT" in cfg.MODEL:
        return "build_trident_resnet_backbone", "the config's MODEL.TRIDENT section"
    features = head_features(cfg)
    if not features:
        return None, f"the heads of MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}"
    why = f"the heads read {features}"
    if all(f.startswith("res") for f in features):
        return "build_resnet_backbone", why
    if _stock(cfg.MODEL.META_ARCHITECTURE) == "RetinaNet":
        return "build_retinanet_resnet_fpn_backbone", why
    return "build_resnet_fpn_backbone", why


def wrapped_backbone_name(cfg):
    """(builder the non-local backbone wraps, its key), or (None, None) for other backbones."""
    name = cfg.MODEL.BACKBONE.NAME
    if name not in NONLOCAL_BACKBONES:
        return None, None
    if NONLOCAL_BACKBONES[name] is None:
        return cfg.MODEL.NONLOCAL.BACKBONE_NAME, "MODEL.NONLOCAL.BACKBONE_NAME"
    return NONLOCAL_BACKBONES[name], f"MODEL.BACKBONE.NAME={name!r} (which wraps it)"


def backbone_problem(cfg, outputs: Optional[List[str]] = None) -> Optional[ConfigError]:
    """A ConfigError when the non-local backbone wraps another builder than the keys describe or
    (given its ``outputs``) lacks an output the heads read; else None."""
    wrapped, key = wrapped_backbone_name(cfg)
    if wrapped is None:
        return None
    described, why = described_resnet_builder(cfg)
    features = head_features(cfg) or []
    missing = [f for f in features if outputs is not None and f not in outputs]
    if described and wrapped in KNOWN_BUILDERS and wrapped != described:
        problem = f"builds another network than the config describes ({why})"
    elif missing:
        problem = f"builds the outputs {list(outputs)}, without {missing} that the heads read"
    else:
        return None
    if described and described != wrapped:
        fix = f"set MODEL.NONLOCAL.BACKBONE_NAME {described!r}"
        if key != "MODEL.NONLOCAL.BACKBONE_NAME":
            fix = f"set MODEL.BACKBONE.NAME 'build_nonlocal_backbone' and {fix}"
    else:
        fix = "name the builder this config's ResNet was built with (its MODEL.BACKBONE.NAME)"
    return ConfigError(f"{key}={wrapped!r} {problem}: {fix}.")


@contextmanager
def explaining_build_errors(cfg):
    """Around ``build_model(cfg)``: ``backbone_problem`` raised first, the warnings logged, and
    a head missing a backbone output explained."""
    error = backbone_problem(cfg)
    if error is not None:
        raise error
    warn_about_the_blocks(cfg)
    try:
        yield
    except (KeyError, AssertionError):
        error = None
        if wrapped_backbone_name(cfg)[0] is not None:
            from detectron2.modeling import build_backbone

            with suppress(KeyError, AssertionError):  # the backbone fails too: re-raise
                error = backbone_problem(cfg, list(build_backbone(cfg).output_shape()))
        if error is None:
            raise
        raise error from None


def warn_about_the_blocks(cfg) -> None:
    """Settings that train, but not as a user may think: blocks attending over a padded batch's
    padding (no valid sizes passed), blocks in a frozen stage."""
    if wrapped_backbone_name(cfg)[0] is None:
        return
    meta = cfg.MODEL.META_ARCHITECTURE
    if cfg.MODEL.NONLOCAL.VALID_REGION and meta not in VALID_REGION_META_ARCHITECTURES:
        ours = {stock: ours for ours, stock in VALID_REGION_META_ARCHITECTURES.items()}.get(meta)
        fix = f"set MODEL.META_ARCHITECTURE {ours!r} (the same model), or " if ours else ""
        logger.warning(
            f"MODEL.META_ARCHITECTURE={meta!r} passes no valid sizes to the backbone's blocks, so "
            "they attend over the padding of a padded batch; "
            f"{fix}set MODEL.NONLOCAL.VALID_REGION False to accept that and silence this."
        )
    frozen = [
        stage
        for stage in ("res2", "res3", "res4", "res5")
        if int(stage[-1]) <= cfg.MODEL.BACKBONE.FREEZE_AT
        and (cfg.MODEL.NONLOCAL[stage.upper()] or stage in cfg.MODEL.NONLOCAL.GC.STAGES)
    ]
    if frozen:
        logger.warning(
            f"MODEL.BACKBONE.FREEZE_AT={cfg.MODEL.BACKBONE.FREEZE_AT} freezes {frozen}, where "
            "MODEL.NONLOCAL places blocks: they will not train (from an identity start they stay "
            "the identity). Lower FREEZE_AT or move the blocks."
        )
