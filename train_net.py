#!/usr/bin/env python
"""
nonlocal_det training script: YAML configs through Detectron2's DefaultTrainer, LazyConfig
``.py`` configs through its SimpleTrainer / AMPTrainer and hooks (as Detectron2's
tools/lazyconfig_train_net.py), COCO evaluation of every task the model predicts, and
Detectron2's launcher.

    python train_net.py            # quickstart: generated dataset, CPU, minutes (configs/quickstart.yaml)
    python train_net.py --config-file configs/mask_rcnn_R101_NL.yaml --num-gpus 8
    python train_net.py --config-file configs/mask_rcnn_R101_NL.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file configs/mask_rcnn_R101_NL.py --num-gpus 8          # LazyConfig
    python train_net.py --config-file configs/mask_rcnn_R101_NL.py --eval-only train.init_checkpoint=model.pth
    python train_net.py --config-file ... --resume          # continue from OUTPUT_DIR/last_checkpoint
"""

import logging
import os

import detectron2.utils.comm as comm
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.evaluation import (
    COCOEvaluator,
    inference_on_dataset,
    print_csv_format,
    verify_results,
)
from detectron2.utils.logger import setup_logger

from nonlocal_det.checkpoint import AtomicDetectionCheckpointer, reading_weights
from nonlocal_det.config import config_kind, get_nonlocal_cfg, get_nonlocal_lazy_config
from nonlocal_det.data.loading import (
    check_datasets,
    evaluation_dataset_dicts,
    training_dataset_dicts,
)
from nonlocal_det.distributed import check_sync_bn_device, create_ddp_model
from nonlocal_det.engine import NonLocalDefaultTrainer, launch_reporting_errors, write_final_metrics
from nonlocal_det.preflight import amp_settings, check_amp, check_weights

logger = logging.getLogger("nonlocal_det")

QUICKSTART_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "configs", "quickstart.yaml"
)


class Trainer(NonLocalDefaultTrainer):
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
            raise NotImplementedError(
                f"No evaluator for {dataset_name!r}: train_net.py evaluates COCO-format datasets"
            )
        return COCOEvaluator(dataset_name, output_dir=output_folder)


def setup(args):
    """The YAML config of ``args``, frozen, with Detectron2's and nonlocal_det's logging set up."""
    cfg = get_nonlocal_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    _setup_logger(cfg.OUTPUT_DIR, cfg.MODEL.DEVICE)
    return cfg


def setup_lazy(args):
    """The LazyConfig of ``args`` (overrides as key=value), with logging set up."""
    cfg = get_nonlocal_lazy_config(args.config_file, args.opts)
    default_setup(cfg, args)
    _setup_logger(cfg.train.output_dir, cfg.train.device)
    return cfg


def _setup_logger(output_dir, device):
    setup_logger(
        output=output_dir, distributed_rank=comm.get_rank(), name="nonlocal_det", abbrev_name="nl"
    )
    if device == "cpu":
        logger.info("No CUDA device: running on the CPU.")


def do_test(cfg, model):
    """LazyConfig evaluation: ``dataloader.test`` through ``dataloader.evaluator``."""
    if "evaluator" not in cfg.dataloader:
        return None
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    names = cfg.dataloader.test.dataset.names
    write_final_metrics(
        cfg.train.output_dir, [names if isinstance(names, str) else ",".join(names)], results
    )
    return results


def do_train(args, cfg):
    """LazyConfig training: ``cfg.model``, ``optimizer``, ``dataloader.train``, ``lr_multiplier``, ``train.*``."""
    model = instantiate(cfg.model)
    logger.info(f"Model:\n{model}")
    model.to(cfg.train.device)
    check_sync_bn_device(cfg, model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cfg.train.ddp)
    amp_enabled, precision, _, _ = amp_settings(cfg)
    if amp_enabled:
        trainer = AMPTrainer(model, train_loader, optimizer, precision=getattr(torch, precision))
    else:
        trainer = SimpleTrainer(model, train_loader, optimizer)
    checkpointer = AtomicDetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
        ]
    )
    with reading_weights("train.init_checkpoint", cfg.train.init_checkpoint):
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # the checkpoint holds the iteration that just finished
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main_lazy(args):
    cfg = setup_lazy(args)
    check_datasets(cfg, args.eval_only)
    check_weights(cfg, resume=args.resume)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        with reading_weights("train.init_checkpoint", cfg.train.init_checkpoint):
            DetectionCheckpointer(model, save_dir=cfg.train.output_dir).resume_or_load(
                cfg.train.init_checkpoint, resume=args.resume
            )
        return do_test(cfg, model)
    check_amp(cfg)
    do_train(args, cfg)


def main(args):
    if config_kind(args.config_file) == "lazy":
        return main_lazy(args)
    cfg = setup(args)
    check_datasets(cfg, args.eval_only)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        check_weights(cfg, resume=False)
        with reading_weights("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS):
            DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
                cfg.MODEL.WEIGHTS, resume=args.resume
            )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    check_weights(cfg, resume=args.resume)
    check_amp(cfg)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv=None):
    parser = default_argument_parser()
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks of user errors (NONLOCAL_DET_DEBUG=1)"
    )
    args = parser.parse_args(argv)
    if args.debug:
        os.environ["NONLOCAL_DET_DEBUG"] = "1"  # inherited by the launched processes
    if not args.config_file:
        args.config_file = QUICKSTART_CONFIG
        shown = os.path.relpath(QUICKSTART_CONFIG)
        print(
            f"No --config-file given: running the quickstart ({QUICKSTART_CONFIG if shown.startswith('..') else shown})."
        )
    return args


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch_reporting_errors(main, args)
