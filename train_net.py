#!/usr/bin/env python
"""
nonlocal_det training script: Detectron2's DefaultTrainer with the non-local config keys,
COCO evaluation for every task the config turns on, and Detectron2's launcher.

    python train_net.py --config-file configs/mask_rcnn_R101_NL.yaml --num-gpus 8
    python train_net.py --config-file configs/mask_rcnn_R101_NL.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file ... --resume          # continue from OUTPUT_DIR/last_checkpoint
"""
import logging
import os
import sys

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.utils.file_io import PathManager

from nonlocal_det.config import get_nonlocal_cfg
from nonlocal_det.data.datasets import SYNTHETIC_DATASETS, ensure_synthetic_dataset, synthetic_root

logger = logging.getLogger("nonlocal_det")


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCO evaluation of every task the model predicts (bbox, segm, keypoints)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if MetadataCatalog.get(dataset_name).get("evaluator_type") != "coco":
            raise NotImplementedError(f"No evaluator for {dataset_name!r}: train_net.py evaluates COCO-format datasets")
        return COCOEvaluator(dataset_name, output_dir=output_folder)


def setup(args):
    cfg = get_nonlocal_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    if cfg.MODEL.DEVICE == "cpu":
        logger.info("No CUDA device: running on the CPU (MODEL.DEVICE=cpu).")
    return cfg


class MissingInputError(RuntimeError):
    """A weight file or dataset that cannot be found or downloaded."""


def check_weights(cfg, resume: bool):
    """Fetch MODEL.WEIGHTS now, so an offline machine gets a message rather than a traceback."""
    weights = cfg.MODEL.WEIGHTS
    if not weights or (resume and PathManager.exists(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))):
        return
    try:
        local = PathManager.get_local_path(weights)
    except Exception as e:  # any downloader failure: offline, DNS, HTTP, proxy
        raise MissingInputError(
            f"MODEL.WEIGHTS={weights!r} could not be found or downloaded ({type(e).__name__}: {e}). "
            "If this machine is offline, download the file elsewhere and pass its path: "
            "`MODEL.WEIGHTS /path/to/file.pkl`, or `MODEL.WEIGHTS ''` to start from random weights."
        ) from None
    if not os.path.isfile(local):
        raise MissingInputError(f"MODEL.WEIGHTS={weights!r}: {local} is not a file. Pass an existing checkpoint.")


def check_datasets(cfg, eval_only: bool):
    """Generate the synthetic dataset if used and missing; name what is missing otherwise."""
    names = list(cfg.DATASETS.TEST) + ([] if eval_only else list(cfg.DATASETS.TRAIN))
    if any(name in SYNTHETIC_DATASETS for name in names) and comm.is_main_process():
        if ensure_synthetic_dataset():
            logger.info(f"Generated the synthetic dataset under {synthetic_root()}")
    comm.synchronize()
    for name in names:
        meta = MetadataCatalog.get(name)
        for attr in ("json_file", "image_root"):
            path = meta.get(attr, None)
            if path and not PathManager.exists(path):
                raise MissingInputError(
                    f"Dataset {name!r}: {attr} {path} does not exist. Detectron2 looks for datasets "
                    f"under $DETECTRON2_DATASETS (now {os.environ.get('DETECTRON2_DATASETS', 'unset, so ./datasets')}); "
                    "see datasets/README.md for the layout."
                )


def main(args):
    cfg = setup(args)
    check_datasets(cfg, args.eval_only)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        check_weights(cfg, resume=False)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    check_weights(cfg, resume=args.resume)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except MissingInputError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    invoke_main()
