#!/usr/bin/env python
"""
Run a config + weights on images or a folder and save Detectron2 Visualizer drawings (boxes,
masks, keypoints).

    python tools/demo.py --config-file configs/quickstart.yaml --input img1.png dir/ \
        --output out_dir MODEL.WEIGHTS output/quickstart/model_final.pth

Without trained weights (MODEL.WEIGHTS empty, or a checkpoint of another config) it stops,
unless --random-weights says a random model is intended.
"""

import glob
import os

import cv2

from nonlocal_det.errors import MissingInputError, exit_on_user_error
from nonlocal_det.harness.checkpoint import build_trained_model
from nonlocal_det.harness.cli.args import (
    model_argument_parser,
    probability,
    tool_config,
    writable_folder,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def expand_inputs(inputs):
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(
                p
                for p in glob.glob(os.path.join(item, "*"))
                if p.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise MissingInputError(f"--input {item!r} is neither an image file nor a folder")
    if not paths:
        raise MissingInputError(f"--input: no images ({', '.join(IMAGE_EXTENSIONS)}) in {inputs}")
    return paths


def main(argv=None):
    parser = model_argument_parser(__doc__)
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    parser.add_argument(
        "--output", required=True, type=writable_folder, help="folder for the drawings"
    )
    parser.add_argument("--confidence-threshold", type=probability, default=0.5)
    args = parser.parse_args(argv)

    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import ColorMode, Visualizer

    cfg = tool_config(parser, args, frozen=False)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    paths = expand_inputs(args.input)
    model = build_trained_model(cfg, random_ok=args.random_weights)
    predictor_cfg = cfg.clone()
    predictor_cfg.MODEL.WEIGHTS = ""  # the checked model below replaces the predictor's own
    predictor = DefaultPredictor(predictor_cfg)
    predictor.model = model
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    os.makedirs(args.output, exist_ok=True)
    for path in paths:
        try:  # Detectron2's reader (PIL): a file cut short is an error, not grey pixels
            image = read_image(path, format="BGR")
        except (OSError, ValueError) as e:
            raise MissingInputError(f"--input: {path} could not be read whole ({e})") from None
        instances = predictor(image)["instances"].to("cpu")
        drawing = Visualizer(
            image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE
        ).draw_instance_predictions(instances)
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        cv2.imwrite(out, drawing.get_image()[:, :, ::-1])
        print(f"{path}: {len(instances)} instances -> {out}")


if __name__ == "__main__":
    exit_on_user_error(main)
