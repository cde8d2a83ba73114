#!/usr/bin/env python
"""
nonlocal_det training script: Detectron2's DefaultTrainer with the non-local config keys,
COCO evaluation for every task the config turns on, and Detectron2's launcher.

    python train_net.py            # quickstart: generated dataset, CPU, minutes (configs/quickstart.yaml)
    python train_net.py --config-file configs/mask_rcnn_R101_NL.yaml --num-gpus 8
    python train_net.py --config-file configs/mask_rcnn_R101_NL.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file ... --resume          # continue from OUTPUT_DIR/last_checkpoint
"""
import json
import logging
import math
import os
import sys

import detectron2.utils.comm as comm
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetMapper, MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from nonlocal_det.checkpoint import AtomicDetectionCheckpointer
from nonlocal_det.checks import BadDataError, MissingInputError, UnsupportedSetupError, check_amp, check_weights
from nonlocal_det.config import get_nonlocal_cfg
from nonlocal_det.distributed import check_sync_bn_device, cpu_ddp_support
from nonlocal_det.data.datasets import ensure_generated_datasets
from nonlocal_det.data.validation import evaluation_dataset_dicts, training_dataset_dicts

logger = logging.getLogger("nonlocal_det")

QUICKSTART_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "quickstart.yaml")
FINAL_METRICS_FILE = "final_metrics.json"
# Errors that explain themselves: printed without a traceback.
EXPECTED_ERRORS = (BadDataError, MissingInputError, UnsupportedSetupError)


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        with cpu_ddp_support():  # launch on a CPU machine: several gloo processes
            super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED:  # DefaultTrainer leaves AMPTrainer at float16
            self._trainer.precision = getattr(torch, cfg.SOLVER.AMP.PRECISION)

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        check_sync_bn_device(cfg, model)
        return model

    def build_hooks(self):
        # DefaultTrainer creates its checkpointer just before calling build_hooks, whose
        # PeriodicCheckpointer keeps a reference to it: swap in the atomic one here.
        self.checkpointer = AtomicDetectionCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, **self.checkpointer.checkpointables
        )
        return super().build_hooks()

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's loader over checked records: bad data stops here, before training."""
        return build_detection_train_loader(cfg, dataset=training_dataset_dicts(cfg))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            evaluation_dataset_dicts(cfg, dataset_name),
            mapper=DatasetMapper(cfg, False),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

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
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="nonlocal_det", abbrev_name="nl")
    if cfg.MODEL.DEVICE == "cpu":
        logger.info("No CUDA device: running on the CPU (MODEL.DEVICE=cpu).")
    return cfg


def check_datasets(cfg, eval_only: bool):
    """Generate the synthetic dataset if used and missing; name what is missing or unusable otherwise."""
    names = list(cfg.DATASETS.TEST) + ([] if eval_only else list(cfg.DATASETS.TRAIN))
    if comm.is_main_process():
        for directory in ensure_generated_datasets(names):
            logger.info(f"Generated the dataset {directory}")
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
    if not eval_only:  # the evaluation after training would otherwise find bad data only at the end
        for name in cfg.DATASETS.TEST:
            evaluation_dataset_dicts(cfg, name)


def write_final_metrics(cfg, results) -> None:
    """Save evaluation results as OUTPUT_DIR/final_metrics.json: {dataset: {task: {metric: value}}}.

    Metrics COCO cannot compute (e.g. APl with no large objects) are NaN in Detectron2's results
    and null in the file, so that it is strict JSON.
    """
    if not results or not comm.is_main_process():
        return
    if len(cfg.DATASETS.TEST) == 1:  # Detectron2 returns a single dataset's results unwrapped
        results = {cfg.DATASETS.TEST[0]: results}
    results = {
        dataset: {task: {k: (None if math.isnan(v) else v) for k, v in metrics.items()} for task, metrics in tasks.items()}
        for dataset, tasks in results.items()
    }
    path = os.path.join(cfg.OUTPUT_DIR, FINAL_METRICS_FILE)
    with PathManager.open(path, "w") as f:
        json.dump(results, f, indent=2, allow_nan=False)
    logger.info(f"Final metrics written to {path}")


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
        write_final_metrics(cfg, res)
        return res

    check_weights(cfg, resume=args.resume)
    check_amp(cfg)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # DefaultTrainer keeps the results of its last evaluation (TEST.EVAL_PERIOD, and always after the last iteration).
    res = getattr(trainer, "_last_eval_results", None)
    write_final_metrics(cfg, res)
    return res


def parse_args(argv=None):
    args = default_argument_parser().parse_args(argv)
    if not args.config_file:
        args.config_file = QUICKSTART_CONFIG
        shown = os.path.relpath(QUICKSTART_CONFIG)
        print(f"No --config-file given: running the quickstart ({QUICKSTART_CONFIG if shown.startswith('..') else shown}).")
    return args


def invoke_main() -> None:
    args = parse_args()
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
    except EXPECTED_ERRORS as e:
        sys.exit(f"error: {e}")
    except torch.multiprocessing.ProcessRaisedException as e:
        # A worker of a multi-process run: its traceback arrives as text, ending in "module.Class: message".
        last_line = str(e).strip().splitlines()[-1]
        for error in EXPECTED_ERRORS:
            prefix = f"{error.__module__}.{error.__qualname__}: "
            if last_line.startswith(prefix):
                sys.exit(f"error: {last_line[len(prefix):]}")
        raise


if __name__ == "__main__":
    invoke_main()
