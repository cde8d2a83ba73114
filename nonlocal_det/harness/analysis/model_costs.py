"""
Parameters and FLOPs (fvcore, through Detectron2's FlopCountAnalysis; one multiply-add is one flop)
of a config's model at a given input size, random weights and a random image, with the RoI work
made the same for every model (``fix_roi_workload``; docs/overhead.md).
"""

import math
import os

import torch


def sdpa_flop_jit(inputs, outputs):
    """aten::scaled_dot_product_attention: q k^T and p v, in multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(t) for t in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def counted_our_way(analysis):
    """``analysis`` (an fvcore or Detectron2 FlopCountAnalysis) with the fused attention counted
    (``sdpa_flop_jit``) and fvcore's warnings about uncounted ops and uncalled modules off."""
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def analysis_cfg(config_file, opts=()):
    from nonlocal_det.harness.config import get_nonlocal_cfg

    fixed = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]
    fixed += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RPN.NMS_THRESH", "1.0"]
    return get_nonlocal_cfg(config_file, [*fixed, *opts])


def fix_roi_workload(model) -> None:
    """Zero the output layers of the RPN, the box predictor and the keypoint head (of a one-stage
    detector such as RetinaNet: its head's): valid, weight-independent proposals, detections and
    heatmaps (random weights can give degenerate boxes and non-finite heatmaps). FLOP counts depend
    on shapes only."""
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


# (baseline config, non-local config) rows of the overhead table (docs/overhead.md)
OVERHEAD_PAIRS = [
    ("mask_rcnn_R50_baseline.yaml", "mask_rcnn_R50_NL.yaml"),
    ("mask_rcnn_R101_baseline.yaml", "mask_rcnn_R101_NL.yaml"),
    ("mask_rcnn_X152_baseline.yaml", "mask_rcnn_X152_NL.yaml"),
    ("keypoint_rcnn_R101_baseline.yaml", "keypoint_rcnn_R101_NL_head.yaml"),
    ("keypoint_rcnn_R101_baseline.yaml", "keypoint_rcnn_R101_NL_head_backbone.yaml"),
    ("mask_rcnn_R50_baseline.yaml", "mask_rcnn_R50_CGNL.yaml"),
    ("mask_rcnn_R50_baseline.yaml", "mask_rcnn_R50_GC.yaml"),
    ("mask_rcnn_R50_baseline.yaml", "mask_rcnn_R50_DNL.yaml"),
]
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 3, "configs")


def overhead_table(pairs=OVERHEAD_PAIRS, height=800, width=1333, progress=lambda line: None):
    """The markdown FLOP and parameter overhead of each (baseline, non-local) config pair."""
    results, rows = {}, []
    for base, nl in pairs:
        for name in (base, nl):
            if name not in results:
                results[name] = analyze(os.path.join(CONFIGS, name), height, width)
                progress(f"{name}: {results[name]}")
        b, n = results[base], results[nl]
        overhead = 100 * (n["flops"] / b["flops"] - 1)
        added = n["blocks"] - b["blocks"]
        claim = ("yes" if overhead < 5 else "**no**") if added == 1 else f"n/a ({added} blocks)"
        rows.append(
            f"| `{nl}` vs `{base}` | {added} | {b['flops'] / 1e9:.1f} | {n['flops'] / 1e9:.1f} | "
            f"{overhead:+.2f}% | {claim} | "
            f"{100 * (n['backbone_flops'] / b['backbone_flops'] - 1):+.2f}% | "
            f"{b['params'] / 1e6:.1f} | {n['params'] / 1e6:.1f} | "
            f"{100 * (n['params'] / b['params'] - 1):+.2f}% |"
        )
    unsupported = sorted({op for r in results.values() for op in r["unsupported"]})
    header = (
        "| model vs baseline | blocks added | baseline GFLOPs | model GFLOPs | overhead | 1 block "
        "<5%? | backbone overhead | baseline params (M) | model params (M) | params overhead |"
    )
    skipped = ", ".join(f"`{op}`" for op in unsupported) or "none"
    return "\n".join(
        [f"Input {height}×{width}.", "", header, "|---" * 10 + "|", *rows, ""]
        + [f"Operators fvcore does not count: {skipped}."]
    )
