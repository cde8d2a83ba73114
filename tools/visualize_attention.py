#!/usr/bin/env python
"""
Where a non-local block looks (fig. 3 of Wang et al. 2018): for chosen query positions, arrows
to the 20 highest-weighted key positions, drawn over the image. One PNG for the first
non-local block of the backbone, and, for keypoint models with a non-local head, one for the
first head block on the highest-scoring detected person. Weights come from the block's
``attention_for_queries``, which never holds the full matrix.

    python tools/visualize_attention.py --config-file configs/quickstart.yaml --input img.png \
        --output vis/ MODEL.WEIGHTS output/quickstart/model_final.pth
"""

import argparse
import os

import cv2
import numpy as np
import torch

from nonlocal_det.errors import ConfigError, MissingInputError, exit_on_user_error
from nonlocal_det.harness.checkpoint import build_trained_model
from nonlocal_det.harness.cli.args import model_argument_parser, tool_config, writable_folder

TOP_K = 20


def draw_arrows(image, query_xy, key_xy, weights, color):
    """Arrows from each query to its top keys; thicker and more opaque for larger weights."""
    overlay, style = image.copy(), {"tipLength": 0.08, "line_type": cv2.LINE_AA}
    for (qx, qy), keys, w in zip(query_xy, key_xy, weights):
        query = (int(qx), int(qy))
        for (kx, ky), strength in zip(keys, w / max(w.max(), 1e-12)):
            thickness = 1 + int(2 * strength)
            cv2.arrowedLine(overlay, query, (int(kx), int(ky)), color, thickness, **style)
        cv2.circle(overlay, query, 4, (255, 255, 255), -1, cv2.LINE_AA)
    return cv2.addWeighted(overlay, 0.85, image, 0.15, 0)


def top_keys(block, x, queries_rc, to_image):
    """
    Args:
        block: a NonLocalBlock2d; x: its input (1, C, H, W); queries_rc: (Q, 2) rows/cols in x.
        to_image: maps (N, 2) (row, col) positions of x's grid (floats) to image (x, y).
    Returns:
        query (x, y) (Q, 2), key (x, y) (Q, K, 2), weights (Q, K).
    """
    weights = block.attention_for_queries(x, queries_rc.to(x.device))[0].cpu()  # (Q, Hk, Wk)
    num_q, key_h, key_w = weights.shape
    k = min(TOP_K, key_h * key_w)
    values, index = weights.flatten(1).topk(k, dim=1)
    rows, cols = (index // key_w).float(), (index % key_w).float()
    if block.sub_sample:  # key (u, v) pools rows 2u..2u+1, cols 2v..2v+1: use the cell centre
        rows, cols = 2 * rows + 0.5, 2 * cols + 0.5
    keys = to_image(torch.stack([rows, cols], -1).reshape(-1, 2)).reshape(num_q, k, 2)
    return to_image(queries_rc.float()), keys, values


def _has_blocks(module) -> bool:
    from nonlocal_det.layers import CGNLBlock2d, NonLocalBlock2d

    return any(isinstance(m, (NonLocalBlock2d, CGNLBlock2d)) for m in module.modules())


def capture_input(block):
    """Record the block's input as ``store["x"]``: cropped to the image's valid region when the
    model passed valid sizes (MODEL.NONLOCAL.VALID_REGION), as the block computed it."""
    store = {}

    def record(module, args, kwargs):
        x, sizes = args[0].detach(), kwargs.get("valid_sizes")
        store["x"] = x if sizes is None else x[..., : sizes[0][0], : sizes[0][1]]

    handle = block.register_forward_pre_hook(record, with_kwargs=True)
    return store, handle


def _point(text: str):
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected x,y in image pixels") from None
    return x, y


def _box(text: str):
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected x0,y0,x1,y1 (4 numbers)") from None
    if not (x1 > x0 and y1 > y0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected x1 > x0 and y1 > y0")
    return torch.tensor([x0, y0, x1, y1])


def parse_args(argv=None):
    parser = model_argument_parser(__doc__)
    parser.add_argument("--input", required=True, help="an image")
    parser.add_argument("--output", required=True, type=writable_folder, help="folder for PNGs")
    parser.add_argument(
        "--queries",
        action="append",
        type=_point,
        help="a query point x,y in image pixels; repeat the flag for several (default: 3 points)",
    )
    box_help = "x0,y0,x1,y1 in image pixels: the person box for the keypoint-head picture "
    box_help += "(default: the highest-scoring detected person)"
    parser.add_argument("--person-box", type=_box, help=box_help)
    args = parser.parse_args(argv)
    return args, tool_config(parser, args)


def _read_image(args):
    """The BGR image of --input, with the --queries checked against its size."""
    image = cv2.imread(args.input, cv2.IMREAD_COLOR)
    if image is None:
        raise MissingInputError(f"--input {args.input} could not be read as an image")
    height, width = image.shape[:2]
    outside = [(x, y) for x, y in args.queries or [] if not (0 <= x < width and 0 <= y < height)]
    if outside:
        where = f"the {width}x{height} image {args.input}"
        raise ConfigError(f"--queries {outside} lie outside {where} (x, y in pixels)")
    return image


def _run_model(model, block, image, cfg):
    """One inference on ``image``: its detections, the backbone block's input (``capture_input``),
    the backbone's features, and (scale_x, scale_y) of the network's input over the image."""
    from detectron2.data import transforms as T

    height, width = image.shape[:2]
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    resized = aug.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    store, handle = capture_input(block)
    # the keypoint-head picture reuses this pass's features instead of running the backbone again
    hook = model.backbone.register_forward_hook(lambda m, args, out: store.update(features=out))
    with torch.no_grad():
        (outputs,) = model([{"image": tensor, "height": height, "width": width}])
    handle.remove()
    hook.remove()
    scale = (resized.shape[1] / width, resized.shape[0] / height)
    return outputs, store["x"], store["features"], scale


def backbone_picture(args, model, image, name, block, x, scale):
    """The backbone block's arrows for --queries (or 3 default points); writes the PNG."""
    from nonlocal_det.harness.analysis.attention import stride_in_backbone

    height, width = image.shape[:2]
    scale_x, scale_y = scale
    stride = stride_in_backbone(model.backbone, block)
    default = [[width * fx, height * fy] for fx, fy in ((0.3, 0.4), (0.5, 0.5), (0.7, 0.6))]
    points = np.array(args.queries or default)
    rows = np.clip((points[:, 1] * scale_y / stride).astype(int), 0, x.shape[-2] - 1)
    cols = np.clip((points[:, 0] * scale_x / stride).astype(int), 0, x.shape[-1] - 1)

    def to_image(rc):
        image_x, image_y = (rc[:, 1] + 0.5) * stride / scale_x, (rc[:, 0] + 0.5) * stride / scale_y
        return torch.stack([image_x, image_y], -1)

    q_xy, k_xy, w = top_keys(block, x, torch.as_tensor(np.stack([rows, cols], 1)), to_image)
    stem = os.path.splitext(os.path.basename(args.input))[0]
    out = os.path.join(args.output, f"{stem}_backbone_{name.replace('.', '_')}.png")
    cv2.imwrite(out, draw_arrows(image, q_xy.numpy(), k_xy.numpy(), w.numpy(), (0, 200, 255)))
    print(f"backbone block {name}: {out}")


def head_picture(args, model, image, outputs, features, scale):
    """The first keypoint-head block's arrows inside a person box; writes the PNG."""
    from detectron2.structures import Boxes

    from nonlocal_det.harness.analysis.attention import attention_blocks

    head = model.roi_heads.keypoint_head
    name, block = next(iter(attention_blocks(head).items()))
    box = args.person_box
    if box is None:
        instances = outputs["instances"].to("cpu")
        persons = instances[instances.pred_classes == 0] if len(instances) else instances
        if len(persons) == 0:
            print("no person detected: no keypoint-head picture (pass --person-box to choose one)")
            return
        box = persons[persons.scores.argmax().item()].pred_boxes.tensor[0]
    scaled = box * torch.tensor([*scale, *scale])
    with torch.no_grad():
        roi_features = model.roi_heads.keypoint_pooler(
            [features[f] for f in model.roi_heads.keypoint_in_features],
            [Boxes(scaled[None].to(model.device))],
        )
        store, handle = capture_input(block)
        head.layers(roi_features)
        handle.remove()
    hx = store["x"]
    side = hx.shape[-1]
    grid = torch.tensor([[row, side // 2] for row in (side // 4, side // 2, 3 * side // 4)])
    x0, y0, x1, y1 = box.tolist()

    def to_image(rc):
        image_x = x0 + (rc[:, 1] + 0.5) / side * (x1 - x0)
        image_y = y0 + (rc[:, 0] + 0.5) / hx.shape[-2] * (y1 - y0)
        return torch.stack([image_x, image_y], -1)

    q_xy, k_xy, w = top_keys(block, hx, grid, to_image)
    drawing = draw_arrows(image, q_xy.numpy(), k_xy.numpy(), w.numpy(), (255, 120, 0))
    cv2.rectangle(drawing, (int(x0), int(y0)), (int(x1), int(y1)), (0, 255, 0), 1)
    stem = os.path.splitext(os.path.basename(args.input))[0]
    out = os.path.join(args.output, f"{stem}_keypoint_head_{name}.png")
    cv2.imwrite(out, drawing)
    print(f"keypoint head block {name}: {out}")


def main(argv=None):
    from nonlocal_det.harness.analysis.attention import attention_blocks

    args, cfg = parse_args(argv)
    image = _read_image(args)
    model = build_trained_model(cfg, random_ok=args.random_weights)
    name, block = next(iter(attention_blocks(model.backbone).items()))
    outputs, x, features, scale = _run_model(model, block, image, cfg)
    os.makedirs(args.output, exist_ok=True)
    backbone_picture(args, model, image, name, block, x, scale)
    head = getattr(model.roi_heads, "keypoint_head", None) if cfg.MODEL.KEYPOINT_ON else None
    if head is not None and _has_blocks(head):
        head_picture(args, model, image, outputs, features, scale)


if __name__ == "__main__":
    exit_on_user_error(main)
