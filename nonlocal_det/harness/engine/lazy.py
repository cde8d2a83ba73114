"""
Training and evaluation of a LazyConfig ``.py`` file for train_net.py (``run_lazy_config``), as
Detectron2's ``tools/lazyconfig_train_net.py`` does it.
"""

import logging

import detectron2.utils.comm as comm
import torch
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format

from ..checkpoint import CheckedCheckpointer, load_evaluated_weights, resuming
from ..config import get_nonlocal_lazy_config
from ..data.loading import check_datasets
from ..distributed import check_sync_bn_device, create_ddp_model
from ..preflight import amp_settings, check_amp, check_output_dir, check_weights, check_world_size
from .defaults import setup_nonlocal_logger
from .results import write_final_metrics

logger = logging.getLogger("nonlocal_det")


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
    """Training with Detectron2's trainer and hooks; --resume continues from the output folder."""
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
    main = comm.is_main_process()
    writers = default_writers(cfg.train.output_dir, cfg.train.max_iter) if main else None
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(writers, period=cfg.train.log_period) if main else None,
        ]
    )
    initial = ("train.init_checkpoint", cfg.train.init_checkpoint)
    with resuming(
        checkpointer, args.resume, initial, optimizer, None, args.allow_unmatched_weights
    ):
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # the checkpoint holds the iteration that just finished
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def run_lazy_config(args):
    """train_net.py's ``main`` for a LazyConfig file: evaluate (--eval-only) or train."""
    cfg = get_nonlocal_lazy_config(args.config_file, args.opts)
    check_output_dir(cfg.train.output_dir, "train.output_dir")
    batch = cfg.dataloader.get("train", {}).get("total_batch_size", None)
    if batch is not None:
        check_world_size(batch, "dataloader.train.total_batch_size", comm.get_world_size())
    default_setup(cfg, args)
    setup_nonlocal_logger(cfg.train.output_dir, cfg.train.device)
    check_datasets(cfg, args.eval_only)
    check_weights(cfg, resume=args.resume)
    if args.eval_only:
        model = create_ddp_model(instantiate(cfg.model).to(cfg.train.device))
        weights = cfg.train.init_checkpoint
        load_evaluated_weights(model, args, cfg.train.output_dir, "train.init_checkpoint", weights)
        return do_test(cfg, model)
    check_amp(cfg)
    return do_train(args, cfg)
