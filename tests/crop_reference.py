"""
Does an image's output depend on its batch-mates?
(tools/valid_region_check.py, docs/valid_region.md)

An image alone vs batched with an image of the other orientation (so both are padded), on a
config's model with random weights, the non-local blocks made non-identity (``open_blocks``), a
FrozenBN backbone, in eval mode. Per model: the interior change of the image's res4 features (its
valid region less a margin, L2 relative to the whole map's), and the share of its detections
found again when batched (same class, IoU > 0.99, score within 1e-3); for non-local models also
how far the batched outputs are from the ``CropReference``: the same model with every non-local
block run by hand on each image's valid crop, which is what exact masking must reproduce.
"""

import math
import os

import torch

__all__ = [
    "build_model",
    "open_blocks",
    "random_image",
    "CropReference",
    "compare",
    "against_reference",
    "measure",
    "table",
]

MARGIN = 4  # res4 cells left out at the valid region's edges
# Beyond the reach of the stock ResNet's own border effects at res4 (measured: 8 cells).
FAR_MARGIN = 9
RES4_STRIDE = 16


def build_model(config_file: str, norm: str, valid_region: bool, calibration_images, seed: int = 0):
    """
    ``config_file``'s model on CPU with random weights (seeded) and a FrozenBN backbone, in eval
    mode: with ``calibration_images`` None, Detectron2's FrozenBN as it starts, the identity (the
    padded zeros stay zero through the ResNet); otherwise BatchNorm statistics taken on
    ``calibration_images`` (each alone), then frozen: unit-scale activations and non-zero shifts,
    as a trained backbone has (the padded zeros become non-zero and reach the valid border).
    """
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.modeling import build_model as build

    from nonlocal_det.harness.config import get_nonlocal_cfg

    backbone_norm = "FrozenBN" if calibration_images is None else "BN"
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.NONLOCAL.NORM", norm]
    opts += ["MODEL.NONLOCAL.VALID_REGION", str(valid_region), "MODEL.RESNETS.NORM", backbone_norm]
    opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    cfg = get_nonlocal_cfg(config_file, opts)
    torch.manual_seed(seed)
    model = build(cfg).eval()
    if calibration_images is None:
        return model
    resnet = model.backbone.bottom_up
    norms = {
        name: m
        for name, m in resnet.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d) and "nonlocal_block" not in name
    }
    for m in norms.values():
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration images
        m.train()
    with torch.no_grad():
        for image in calibration_images:
            resnet(model.preprocess_image([{"image": image}]).tensor)
    for name, m in norms.items():
        parent, _, child = name.rpartition(".")
        setattr(resnet.get_submodule(parent), child, FrozenBatchNorm2d.convert_frozen_batchnorm(m))
    return model.eval()


@torch.no_grad()
def open_blocks(model, image) -> None:
    """
    Make the backbone's non-local blocks non-identity at the scale of their input: the norm's
    weight (or W_z, without a norm) set so that the branch's std equals the input's on ``image``
    (with random FrozenBN weights, activations at res4 reach ~1e3, so a fixed weight would leave
    the branch invisible).
    """
    blocks = _nonlocal_blocks(model)
    scales = {}

    def record(block, inputs, output):
        scales[block] = inputs[0].std().item()

    handles = [b.register_forward_hook(record) for b in blocks]
    run(model, [image])
    for h in handles:
        h.remove()
    for block in blocks:
        (block.norm or block.out).weight.fill_(scales[block])


def _nonlocal_blocks(model):
    from nonlocal_det.modeling import NonLocalMixin

    return [m.nonlocal_block for m in model.backbone.modules() if isinstance(m, NonLocalMixin)]


def random_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A (3, H, W) float image in [0, 255]: smooth random blobs, so detections are not noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 32 + 1, width // 32 + 1, generator=gen)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic")[0]
    noise = torch.rand(3, height, width, generator=gen)
    return (255 * (0.8 * image + 0.2 * noise)).clamp(0, 255).round()


class CropReference:
    """Run every non-local block of a (key-off) model on each image's valid crop, by hand."""

    def __init__(self, model):
        self.blocks, self.sizes = _nonlocal_blocks(model), None
        self.handles = [b.register_forward_hook(self._on_crops) for b in self.blocks]

    def _on_crops(self, block, inputs, output):
        x = inputs[0]
        out = x.clone()
        for i, (h, w) in enumerate(self.sizes):
            rows, cols = math.ceil(h / RES4_STRIDE), math.ceil(w / RES4_STRIDE)
            out[i, :, :rows, :cols] = block.forward(x[i : i + 1, :, :rows, :cols])[0]  # no hooks
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def run(model, images, reference=None):
    """res4 features (B, C, H, W) of the batch and each image's detections."""
    from nonlocal_det.modeling import find_resnet

    res4 = []
    handle = find_resnet(model.backbone).res4.register_forward_hook(lambda m, i, o: res4.append(o))
    if reference is not None:
        reference.sizes = [tuple(im.shape[-2:]) for im in images]
    try:
        outputs = model([{"image": im} for im in images])
    finally:
        handle.remove()
    return res4[-1], [o["instances"] for o in outputs]


def interior_change(alone: torch.Tensor, batched: torch.Tensor, margin: int = MARGIN) -> float:
    """||batched - alone|| over the valid region less ``margin`` cells, relative to ||alone||."""
    _, h, w = alone.shape
    inner = (slice(None), slice(margin, h - margin), slice(margin, w - margin))
    diff = batched[:, :h, :w][inner] - alone[inner]
    return (diff.norm() / alone.norm()).item()


def found_again(alone, batched) -> float:
    """Share of ``alone``'s detections with a batched one of its class, IoU > 0.99, score +-1e-3."""
    from detectron2.structures import pairwise_iou

    if len(alone) == 0:
        return float("nan")
    iou = pairwise_iou(alone.pred_boxes, batched.pred_boxes)
    same = alone.pred_classes[:, None] == batched.pred_classes[None]
    close = (alone.scores[:, None] - batched.scores[None]).abs() <= 1e-3
    return ((iou > 0.99) & same & close).any(dim=1).float().mean().item()


def compare(model, image, mate, reference=None) -> dict:
    """The image alone vs batched with ``mate``: changes, and the batched res4 and detections."""
    res4_alone, (dets_alone,) = run(model, [image], reference)
    res4_batched, (dets_batched, _) = run(model, [image, mate], reference)
    h, w = res4_alone.shape[-2:]
    return {
        "change": interior_change(res4_alone[0], res4_batched[0]),
        "far": interior_change(res4_alone[0], res4_batched[0], FAR_MARGIN),
        "found": found_again(dets_alone, dets_batched),
        "count": len(dets_alone),
        "res4": res4_batched[0, :, :h, :w],
        "detections": dets_batched,
    }


def against_reference(result: dict, reference: dict) -> dict:
    """How far a model's batched outputs are from the crop reference's."""
    diff = (result["res4"] - reference["res4"]).norm() / reference["res4"].norm()
    found = found_again(reference["detections"], result["detections"])
    return {**result, "vs_ref": diff.item(), "found_ref": found}


def measure(pairs, norms, config_dir: str, calibrated: bool = True):
    """
    Rows of the table: (pair, model name, result). ``calibrated``: the backbone's frozen
    statistics taken on the two images (else the identity); see ``build_model``.
    """
    rows = []
    baseline = os.path.join(config_dir, "mask_rcnn_R50_baseline.yaml")
    nl = os.path.join(config_dir, "mask_rcnn_R50_NL.yaml")
    for (h, w), (mh, mw) in pairs:
        image, mate = random_image(h, w, seed=1), random_image(mh, mw, seed=2)
        pair = f"{h}x{w} / {mh}x{mw}"
        calibration = [image, mate] if calibrated else None
        stock = build_model(baseline, "GN", False, calibration)
        rows.append((pair, "stock", compare(stock, image, mate)))
        for norm in norms:
            off = build_model(nl, norm, False, calibration)
            open_blocks(off, image)
            on = build_model(nl, norm, True, calibration)
            on.load_state_dict(off.state_dict())
            crops = CropReference(off)
            reference = compare(off, image, mate, crops)
            crops.remove()
            rows.append((pair, f"+1 NL ({norm}), crop reference", reference))
            for name, model in ((f"+1 NL ({norm}), key off", off), (f"+1 NL ({norm}), key on", on)):
                rows.append((pair, name, against_reference(compare(model, image, mate), reference)))
    return rows


def _share(fraction: float) -> str:
    """ "63 %", or — when there was nothing to find (no detection alone)."""
    return "—" if math.isnan(fraction) else f"{100 * fraction:.0f} %"


def table(rows) -> str:
    lines = [
        "| image / batch-mate | model | interior res4 change | far interior | detections found "
        "again (of) | batched res4 vs crop reference | batched detections of the reference found |",
        "|---|---|---|---|---|---|---|",
    ]
    for pair, model, r in rows:
        ref = f"{r['vs_ref']:.1e} | {_share(r['found_ref'])}" if "vs_ref" in r else " | "
        lines.append(
            f"| {pair} | {model} | {r['change']:.1e} | {r['far']:.1e} | "
            f"{_share(r['found'])} ({r['count']}) | {ref} |"
        )
    return "\n".join(lines)
