"""
Training and evaluation of a LazyConfig ``.py`` file, structured as Detectron2's
``tools/lazyconfig_train_net.py``: ``cfg.model``, ``optimizer``,
``dataloader.{train,test,evaluator}``, ``lr_multiplier`` and ``train.*`` through Detectron2's
SimpleTrainer / AMPTrainer and hooks. ``train_net.py`` hands ``.py`` configs to
``run_lazy_config``.
"""

import logging

import detectron2.utils.comm as comm
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format

from ..checkpoint import (
    CheckedCheckpointer,
    keep_config_settings,
    load_trained_weights,
    optimizer_settings,
    reading_weights,
    require_fit,
    resumed_checkpoint,
)
from ..config import get_nonlocal_lazy_config
from ..data.loading import check_datasets
from ..distributed import check_sync_bn_device, create_ddp_model
from ..preflight import (
    amp_settings,
    check_amp,
    check_output_dir,
    check_weights,
    check_world_size,
)
from .defaults import setup_nonlocal_logger
from .results import write_final_metrics

__all__ = ["run_lazy_config"]

logger = logging.getLogger("nonlocal_det")


def setup_lazy(args):
    """The LazyConfig of ``args`` (overrides as key=value), with logging set up."""
    cfg = get_nonlocal_lazy_config(args.config_file, args.opts)
    check_output_dir(cfg.train.output_dir, "train.output_dir")
    batch = cfg.dataloader.get("train", {}).get("total_batch_size", None)
    if batch is not None:
        check_world_size(batch, "dataloader.train.total_batch_size", comm.get_world_size())
    default_setup(cfg, args)
    setup_nonlocal_logger(cfg.train.output_dir, cfg.train.device)
    return cfg


def do_test(cfg, model):
    """Evaluation: ``dataloader.test`` through ``dataloader.evaluator``; final_metrics.json."""
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
    """
    Training with Detectron2's trainer and hooks; resumes from the output folder with --resume.
    """
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
    checkpointer = CheckedCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    main_process = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if main_process
            else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if main_process
            else None,
        ]
    )
    path = resumed_checkpoint(checkpointer) if args.resume else None
    configured = optimizer_settings(optimizer)
    key, source = (
        ("--resume: checkpoint", path)
        if path
        else ("train.init_checkpoint", cfg.train.init_checkpoint)
    )
    with reading_weights(key, source):
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    if path is not None:
        require_fit(checkpointer, path, args.allow_unmatched_weights)
        keep_config_settings(optimizer, None, configured, path)
    # the checkpoint holds the iteration that just finished
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def run_lazy_config(args):
    """train_net.py's ``main`` for a LazyConfig file: evaluate (--eval-only) or train."""
    cfg = setup_lazy(args)
    check_datasets(cfg, args.eval_only)
    check_weights(cfg, resume=args.resume)
    if args.eval_only:
        model = create_ddp_model(instantiate(cfg.model).to(cfg.train.device))
        path = (
            resumed_checkpoint(DetectionCheckpointer(model, cfg.train.output_dir))
            if args.resume
            else None
        )
        load_trained_weights(
            model,
            path or cfg.train.init_checkpoint,
            random_ok=args.allow_unmatched_weights,
            key="--resume: checkpoint" if path else "train.init_checkpoint",
            flag="--allow-unmatched-weights",
        )
        return do_test(cfg, model)
    check_amp(cfg)
    return do_train(args, cfg)
