#!/usr/bin/env python
"""
Run a config + weights on images or a folder and save Detectron2 Visualizer drawings (boxes,
masks, keypoints).

    python tools/demo.py --config-file configs/quickstart.yaml --input img1.png dir/ \
        --output out_dir MODEL.WEIGHTS output/quickstart/model_final.pth
"""

import argparse
import glob
import os
import sys

import cv2

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
            raise FileNotFoundError(f"--input {item!r} is neither an image file nor a folder")
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {inputs}")
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    parser.add_argument("--output", required=True, help="folder for the drawings")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path"
    )
    args = parser.parse_args(argv)

    from detectron2.data import MetadataCatalog
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import ColorMode, Visualizer

    from nonlocal_det.checks import MissingInputError, check_weights
    from nonlocal_det.config import get_nonlocal_cfg

    cfg = get_nonlocal_cfg(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.freeze()
    try:
        paths = expand_inputs(args.input)
        check_weights(cfg, resume=False)
    except (FileNotFoundError, MissingInputError) as e:
        sys.exit(f"error: {e}")
    predictor = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    os.makedirs(args.output, exist_ok=True)
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            sys.exit(f"error: {path} could not be read as an image")
        instances = predictor(image)["instances"].to("cpu")
        drawing = Visualizer(
            image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE
        ).draw_instance_predictions(instances)
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        cv2.imwrite(out, drawing.get_image()[:, :, ::-1])
        print(f"{path}: {len(instances)} instances -> {out}")


if __name__ == "__main__":
    main()
