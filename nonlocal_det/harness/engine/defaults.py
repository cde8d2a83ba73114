"""
``NonLocalDefaultTrainer``: Detectron2's DefaultTrainer with what nonlocal_det's YAML configs and
CPU runs need. ``DefaultTrainer.__init__`` builds the DDP wrapper and the AMPTrainer itself, with
no argument, hook or overridable method for either, so two needs rely on Detectron2 internals
(marked "Detectron2-internal"; tests/test_detectron2_internals.py fails if they change):
1. DDP of a CPU model: ``__init__`` calls the module-level ``create_ddp_model``, whose
   ``device_ids=[local rank]`` torch refuses for a CPU module, so ``distributed.cpu_ddp_support``
   replaces that function while ``__init__`` runs.
2. SOLVER.AMP.PRECISION: the AMPTrainer is built with float16 and kept only as the private
   ``_trainer`` (no public ``precision`` reaches it); its ``precision`` is set after.
Atomic checkpoints need neither (``build_hooks``, called before any hook exists, replaces the
public ``checkpointer``); a LazyConfig run builds these objects itself, through public APIs.
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
from ..checkpoint import CheckedCheckpointer, resuming
from ..data.loading import evaluation_dataset_dicts, training_dataset_dicts
from ..distributed import check_sync_bn_device, cpu_ddp_support
from .results import write_final_metrics


def setup_nonlocal_logger(output_dir: str, device: str) -> None:
    """nonlocal_det's log lines ("nl") beside Detectron2's: the console and output_dir/log.txt."""
    setup_logger(
        output=output_dir, distributed_rank=comm.get_rank(), name="nonlocal_det", abbrev_name="nl"
    )
    if device == "cpu":
        logging.getLogger("nonlocal_det").info("No CUDA device: running on the CPU.")


class NonLocalDefaultTrainer(DefaultTrainer):
    """DefaultTrainer that also trains CPU processes (gloo), uses SOLVER.AMP.PRECISION, checkpoints
    atomically, refuses SyncBatchNorm on a multi-process CPU run, loads checked records, evaluates
    every predicted task with COCOEvaluator and writes OUTPUT_DIR/final_metrics.json."""

    def __init__(self, cfg):
        with cpu_ddp_support():  # Detectron2-internal (1)
            super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED:  # Detectron2-internal (2)
            if not isinstance(self._trainer, AMPTrainer):
                raise RuntimeError(
                    "DefaultTrainer no longer keeps its AMPTrainer as _trainer: this Detectron2 "
                    "differs from the one nonlocal_det supports (see "
                    "tests/test_detectron2_internals.py)."
                )
            self._trainer.precision = getattr(torch, cfg.SOLVER.AMP.PRECISION)

    def build_hooks(self):
        """DefaultTrainer's hooks, saving through a ``CheckedCheckpointer`` (atomic writes)."""
        self.checkpointer = CheckedCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, **self.checkpointer.checkpointables
        )
        return super().build_hooks()

    def resume_or_load(self, resume=True, allow_unmatched=False):
        """DefaultTrainer's, told truthfully (``resuming``); a checkpoint at or past SOLVER.MAX_ITER
        is refused (nothing would train)."""
        initial = ("MODEL.WEIGHTS", self.cfg.MODEL.WEIGHTS)
        with resuming(
            self.checkpointer, resume, initial, self.optimizer, self.scheduler, allow_unmatched
        ) as path:
            super().resume_or_load(resume)
        if path is not None and self.start_iter >= self.max_iter:
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
