"""
Another Detectron2 project: it only imports nonlocal_det and sets config keys, the way a user's
own project would; no nonlocal_det internals are used.
"""

import pytest

pytestmark = pytest.mark.detectron2


def test_builds_nonlocal_backbone_and_head_from_config_keys():
    import torch
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone
    from detectron2.modeling.roi_heads import build_keypoint_head

    import nonlocal_det

    cfg = get_cfg()
    nonlocal_det.add_nonlocal_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_nonlocal_backbone"
    cfg.MODEL.NONLOCAL.BACKBONE_NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.NONLOCAL.MODE = "dot_product"
    cfg.MODEL.NONLOCAL.RES3 = [1, 3]
    cfg.MODEL.NONLOCAL.RES4 = [1, 3, 5]
    cfg.MODEL.ROI_KEYPOINT_HEAD.NAME = "KRCNNConvDeconvUpsampleNLHead"

    backbone = build_backbone(cfg)
    nl_keys = [k for k in backbone.state_dict() if "nonlocal" in k and k.endswith("theta.weight")]
    assert nl_keys == [
        "bottom_up.res3.1.nonlocal_block.theta.weight",
        "bottom_up.res3.3.nonlocal_block.theta.weight",
        "bottom_up.res4.1.nonlocal_block.theta.weight",
        "bottom_up.res4.3.nonlocal_block.theta.weight",
        "bottom_up.res4.5.nonlocal_block.theta.weight",
    ]
    features = backbone(torch.randn(1, 3, 64, 64))
    assert set(features) == {"p2", "p3", "p4", "p5", "p6"}

    head = build_keypoint_head(cfg, ShapeSpec(channels=256, height=14, width=14))
    assert sum("nonlocal_fcn" in k and k.endswith("theta.weight") for k in head.state_dict()) == 4
