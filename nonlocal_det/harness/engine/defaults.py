"""
``NonLocalDefaultTrainer``: Detectron2's DefaultTrainer with what nonlocal_det's YAML configs and
CPU runs need.

Two of those needs have no public route through ``DefaultTrainer.__init__``, which builds the
DistributedDataParallel wrapper and the AMPTrainer itself and takes no argument, hook or
overridable method for either. They are kept here, each marked "Detectron2-internal", and
tests/test_detectron2_internals.py fails if Detectron2 changes under them:

1. DistributedDataParallel of a CPU model: Detectron2's ``create_ddp_model`` passes
   ``device_ids=[local rank]``, which torch refuses for a CPU module; ``DefaultTrainer.__init__``
   calls that module-level function directly, so ``distributed.cpu_ddp_support`` replaces it
   while ``DefaultTrainer.__init__`` runs.
2. SOLVER.AMP.PRECISION: ``DefaultTrainer`` builds its AMPTrainer with the default float16 and
   keeps it only as the private ``_trainer`` (its public ``model``/``optimizer`` properties reach
   through it, but no ``precision``); the AMPTrainer's public ``precision`` attribute is set after.

Atomic checkpoints need no such step: ``build_hooks``, which ``DefaultTrainer.__init__`` calls
before any hook exists, replaces the public ``checkpointer`` by a ``CheckedCheckpointer``. A
LazyConfig run (train_net.py) builds these objects itself, through their public constructors.
"""

import logging
import os

import detectron2.utils.comm as comm
import torch
from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import AMPTrainer, DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.logger import setup_logger

from nonlocal_det.errors import ConfigError

from ..advice import explaining_build_errors
from ..checkpoint import (
    CheckedCheckpointer,
    keep_config_settings,
    optimizer_settings,
    reading_weights,
    require_fit,
    resumed_checkpoint,
)
from ..data.loading import evaluation_dataset_dicts, training_dataset_dicts
from ..distributed import check_sync_bn_device, cpu_ddp_support
from .results import write_final_metrics

__all__ = ["NonLocalDefaultTrainer", "setup_nonlocal_logger"]


def setup_nonlocal_logger(output_dir: str, device: str) -> None:
    """
    nonlocal_det's log lines ("nl") beside Detectron2's, in the console and output_dir/log.txt.
    """
    setup_logger(
        output=output_dir, distributed_rank=comm.get_rank(), name="nonlocal_det", abbrev_name="nl"
    )
    if device == "cpu":
        logging.getLogger("nonlocal_det").info("No CUDA device: running on the CPU.")


class NonLocalDefaultTrainer(DefaultTrainer):
    """
    DefaultTrainer that also: trains several CPU processes (gloo), uses SOLVER.AMP.PRECISION
    (float16 or bfloat16), writes checkpoints atomically (``CheckedCheckpointer``),
    refuses torch's SyncBatchNorm on a multi-process CPU run at build time, loads checked
    dataset records (bad data stops before training), evaluates every task the model predicts
    with COCOEvaluator, and writes the results of every evaluation to
    OUTPUT_DIR/final_metrics.json.
    """

    def __init__(self, cfg):
        with cpu_ddp_support():  # Detectron2-internal (1)
            super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED:  # Detectron2-internal (2)
            amp_trainer = self._trainer
            if not isinstance(amp_trainer, AMPTrainer):
                raise RuntimeError(
                    "DefaultTrainer no longer keeps its AMPTrainer as _trainer: this Detectron2 "
                    "differs "
                    "from the one nonlocal_det supports (see tests/test_detectron2_internals.py)."
                )
            amp_trainer.precision = getattr(torch, cfg.SOLVER.AMP.PRECISION)

    def build_hooks(self):
        """DefaultTrainer's hooks, saving through a ``CheckedCheckpointer`` (atomic writes)."""
        self.checkpointer = CheckedCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, **self.checkpointer.checkpointables
        )
        return super().build_hooks()

    def resume_or_load(self, resume=True, allow_unmatched=False):
        """
        DefaultTrainer's, told truthfully: a damaged ``last_checkpoint`` state, a checkpoint that
        does not fit the model (unless ``allow_unmatched``), or an unreadable MODEL.WEIGHTS is
        named in one line; the config's optimizer settings apply over the checkpoint's; a
        checkpoint at or past SOLVER.MAX_ITER is refused (nothing would train).
        """
        path = resumed_checkpoint(self.checkpointer) if resume else None
        configured = optimizer_settings(self.optimizer, self.scheduler)
        key, source = (
            ("--resume: checkpoint", path) if path else ("MODEL.WEIGHTS", self.cfg.MODEL.WEIGHTS)
        )
        with reading_weights(key, source):
            super().resume_or_load(resume)
        if path is None:
            return
        require_fit(self.checkpointer, path, allow_unmatched)
        keep_config_settings(self.optimizer, self.scheduler, configured, path)
        if self.start_iter >= self.max_iter:
            raise ConfigError(
                f"--resume: {path} is at iteration {self.start_iter}, and SOLVER.MAX_ITER="
                f"{self.max_iter}: nothing is left to train. Raise SOLVER.MAX_ITER to train on, or "
                "evaluate the checkpoint with --eval-only."
            )

    @classmethod
    def build_model(cls, cfg):
        with explaining_build_errors(cfg):
            model = super().build_model(cfg)
        check_sync_bn_device(cfg, model)
        return model

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

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer's evaluation, its results also saved as OUTPUT_DIR/final_metrics.json."""
        results = super().test(cfg, model, evaluators)
        write_final_metrics(cfg.OUTPUT_DIR, list(cfg.DATASETS.TEST), results)
        return results
