#!/usr/bin/env python
"""
nonlocal_det training script: YAML configs through Detectron2's DefaultTrainer (the package's
``NonLocalDefaultTrainer``), LazyConfig ``.py`` configs through ``run_lazy_config`` (as Detectron2's
tools/lazyconfig_train_net.py), COCO evaluation of every task the model predicts, Detectron2's
launcher, and user errors as one line.

    python train_net.py          # the quickstart (configs/quickstart.yaml): generated data, CPU
    python train_net.py --config-file configs/mask_rcnn_R101_NL.yaml --num-gpus 8
    python train_net.py --config-file configs/mask_rcnn_R101_NL.yaml --eval-only \
        MODEL.WEIGHTS model.pth
    python train_net.py --config-file configs/mask_rcnn_R101_NL.py --num-gpus 8   # LazyConfig
    python train_net.py --config-file configs/mask_rcnn_R101_NL.py --eval-only \
        train.init_checkpoint=model.pth
    python train_net.py --config-file ... --resume   # continue from OUTPUT_DIR/last_checkpoint
"""

import os

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results

from nonlocal_det.harness.checkpoint import load_evaluated_weights
from nonlocal_det.harness.config import config_kind, get_nonlocal_cfg
from nonlocal_det.harness.data.loading import check_datasets
from nonlocal_det.harness.dry_run import dry_run, explaining_failures
from nonlocal_det.harness.engine import NonLocalDefaultTrainer as Trainer
from nonlocal_det.harness.engine import (
    launch_reporting_errors,
    run_lazy_config,
    setup_nonlocal_logger,
)
from nonlocal_det.harness.preflight import (
    check_amp,
    check_output_dir,
    check_weights,
    check_world_size,
)

QUICKSTART_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "configs", "quickstart.yaml"
)


def setup(args):
    """The YAML config of ``args``, frozen, with Detectron2's and nonlocal_det's logging set up."""
    cfg = get_nonlocal_cfg(args.config_file, args.opts)
    check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    check_world_size(cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH", comm.get_world_size())
    cfg.freeze()
    default_setup(cfg, args)
    setup_nonlocal_logger(cfg.OUTPUT_DIR, cfg.MODEL.DEVICE)
    return cfg


def main(args):
    if config_kind(args.config_file) == "lazy":
        return run_lazy_config(args)
    cfg = setup(args)
    check_datasets(cfg, args.eval_only)
    if args.eval_only:
        with explaining_failures(cfg, "building the model"):
            model = Trainer.build_model(cfg)
        check_weights(cfg, resume=args.resume)
        load_evaluated_weights(model, args, cfg.OUTPUT_DIR, "MODEL.WEIGHTS", cfg.MODEL.WEIGHTS)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    check_weights(cfg, resume=args.resume)
    check_amp(cfg)
    with explaining_failures(cfg, "building the model, optimizer and data loader"):
        trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume, allow_unmatched=args.allow_unmatched_weights)
    if cfg.DRY_RUN:
        dry_run(trainer)
    return trainer.train()


def parse_args(argv=None):
    parser = default_argument_parser()
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks of user errors (NONLOCAL_DET_DEBUG=1)"
    )
    parser.add_argument(
        "--allow-unmatched-weights",
        action="store_true",
        help="with --eval-only or --resume: load weights that leave parameters of the model "
        "unloaded or carry others (refused by default: the model would be partly random)",
    )
    args = parser.parse_args(argv)
    if args.debug:
        os.environ["NONLOCAL_DET_DEBUG"] = "1"  # inherited by the launched processes
    if not args.config_file:
        args.config_file = QUICKSTART_CONFIG
        shown = os.path.relpath(QUICKSTART_CONFIG)
        shown = QUICKSTART_CONFIG if shown.startswith("..") else shown
        print(f"No --config-file given: running the quickstart ({shown}).")
    return args


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch_reporting_errors(main, args)
