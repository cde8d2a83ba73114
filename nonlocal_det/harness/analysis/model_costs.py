"""
Parameters and FLOPs (fvcore, through Detectron2's FlopCountAnalysis) of a config's model at a
given input size, with the RoI work made the same for every model.

FLOPs follow fvcore's convention: one multiply-add counts as one flop. The model runs in
inference mode on a random image of the given size with random weights. Random weights would
make the RoI work depend on chance (degenerate boxes are dropped), so the output layers of the
RPN, the box predictor and the keypoint head are zeroed (proposals = anchors, uniform scores;
counting depends on shapes only), RPN NMS is off and the score threshold is 0: the box head sees
MODEL.RPN.POST_NMS_TOPK_TEST (1000) proposals and the mask/keypoint heads see
TEST.DETECTIONS_PER_IMAGE (100) detections, in every model alike.
"""

import math

import torch

__all__ = ["analysis_cfg", "fix_roi_workload", "counted_our_way", "analyze"]


def sdpa_flop_jit(inputs, outputs):
    """aten::scaled_dot_product_attention: q k^T and p v, in multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(t) for t in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def counted_our_way(analysis):
    """
    ``analysis`` (an fvcore or Detectron2 FlopCountAnalysis) with the fused attention counted
    (``sdpa_flop_jit``) and fvcore's warnings about uncounted ops and uncalled modules off.
    """
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def analysis_cfg(config_file, opts=()):
    from nonlocal_det.harness.config import get_nonlocal_cfg

    fixed = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]
    fixed += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RPN.NMS_THRESH", "1.0"]
    return get_nonlocal_cfg(config_file, [*fixed, *opts])


def fix_roi_workload(model) -> None:
    """
    Zero the output layers of the RPN, the box predictor and the keypoint head (of a one-stage
    detector such as RetinaNet: its head's): valid, weight-independent proposals, detections and
    heatmaps (random weights can give degenerate boxes and non-finite heatmaps). FLOP counts
    depend on shapes only.
    """
    if not hasattr(model, "proposal_generator"):  # one-stage: RetinaNet
        layers = [model.head.cls_score, model.head.bbox_pred]
    else:
        rpn_head = model.proposal_generator.rpn_head
        layers = [rpn_head.objectness_logits, rpn_head.anchor_deltas]
        layers += model.roi_heads.box_predictor.children()
        keypoint_head = getattr(model.roi_heads, "keypoint_head", None)
        if keypoint_head is not None:
            layers.append(keypoint_head.score_lowres)
    for layer in layers:
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)


def analyze(config_file, height, width, opts=()):
    """Block count, parameters, FLOPs (total, backbone, RoI heads) and uncounted ops of a config."""
    from detectron2.modeling import build_model
    from detectron2.utils.analysis import FlopCountAnalysis

    cfg = analysis_cfg(config_file, opts)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    fix_roi_workload(model)
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        analysis = counted_our_way(FlopCountAnalysis(model, [{"image": image}]))
        by_module = analysis.by_module()
        total = analysis.total()
    from nonlocal_det.layers import CGNLBlock2d, GlobalContextBlock2d, NonLocalBlock2d

    kinds = (NonLocalBlock2d, CGNLBlock2d, GlobalContextBlock2d)  # DNL: a NonLocalBlock2d
    return {
        "blocks": sum(isinstance(m, kinds) for m in model.modules()),
        "params": sum(p.numel() for p in model.parameters()),
        "flops": total,
        "backbone_flops": by_module.get("model.backbone", 0),
        "roi_heads_flops": by_module.get("model.roi_heads", 0),
        "unsupported": dict(analysis.unsupported_ops()),
    }
