"""
A dry run of every stage of a training run before its first iteration (``DRY_RUN``, on by
default), on a small sample: the training and test mappers on records of every dataset; one
forward and backward pass of the model on one training batch (its weights, norm statistics and
gradients put back afterwards); the evaluator on a few test images. A failure that would stop the
run later is one line: the stage, the error, the record, and the keys of the config section of
the code that raised (``CODE_SECTIONS``) that differ from the defaults. docs/reliability.md
states the cost.
"""

import copy
import logging
import re
import shutil
import tempfile
import time
import traceback
from contextlib import contextmanager

import torch
from detectron2.data import DatasetMapper
from detectron2.utils.events import EventStorage

from nonlocal_det.errors import USER_ERRORS, ConfigError

from .config_rules import lookup

logger = logging.getLogger(__name__)
SAMPLE = 2  # records per dataset

# The module (file name) of Detectron2 code that raised -> the config section it is built from.
# The frames of a failure are read from the innermost out; the first one listed here names it.
CODE_SECTIONS = {
    "augmentation_impl.py": "INPUT",
    "transform.py": "INPUT",
    "detection_utils.py": "INPUT",
    "dataset_mapper.py": "INPUT",
    "anchor_generator.py": "MODEL.ANCHOR_GENERATOR",
    "rpn.py": "MODEL.RPN",
    "fpn.py": "MODEL.FPN",
    "resnet.py": "MODEL.RESNETS",
    "roi_heads.py": "MODEL.ROI_HEADS",
    "box_head.py": "MODEL.ROI_BOX_HEAD",
    "fast_rcnn.py": "MODEL.ROI_BOX_HEAD",
    "mask_head.py": "MODEL.ROI_MASK_HEAD",
    "keypoint_head.py": "MODEL.ROI_KEYPOINT_HEAD",
    "retinanet.py": "MODEL.RETINANET",
    "semantic_seg.py": "MODEL.SEM_SEG_HEAD",
    "lr_scheduler.py": "SOLVER",
    "solver/build.py": "SOLVER",
    "coco_evaluation.py": "DATASETS.TEST",
    "data/build.py": "DATALOADER",
    "samplers/distributed_sampler.py": "DATALOADER",
}


def _detectron2_path(frame: traceback.FrameSummary):
    """The frame's file path with forward slashes if it is Detectron2's code, else None."""
    path = frame.filename.replace("\\", "/")
    return path if "/detectron2/" in path else None


def _section_of(error: BaseException):
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        path = _detectron2_path(frame)
        for code, section in CODE_SECTIONS.items():
            if path and path.endswith(code):
                return section
    return None


def _text(error: BaseException) -> str:
    """The error's message and, where Detectron2 raised it, its line (a bare ``assert``: the line
    alone; "math domain error" says nothing of which value)."""
    frames = traceback.extract_tb(error.__traceback__)
    line = frames[-1].line if frames else None
    message = " ".join(str(error).split())
    if not message:
        return f"failed: {line}" if line else "(no message)"
    in_detectron2 = frames and _detectron2_path(frames[-1])
    return f"{message} (at `{line}`)" if in_detectron2 and line else message


def suspects(cfg, error: BaseException, section: str = None):
    """The keys of the section of the code that raised, set away from the defaults (the ones
    whose value or name the message quotes first); all of the section's keys if none is."""
    from .config import default_config

    section = _section_of(error) or section
    if section is None:
        return []
    node, default = lookup(cfg, section, None), lookup(default_config(), section, None)
    if node is None:
        return []
    keys = []

    def walk(value, base, prefix):
        if hasattr(value, "items"):
            for name, child in value.items():
                walk(child, lookup(base, name, None), f"{prefix}.{name}")  # None below a None base
        elif value != base:
            keys.append((prefix, value))

    walk(node, default, section)
    message = _text(error)
    words = re.findall(r"[a-z_]{4,}", message.lower())

    def quoted(kv):
        flat = kv[0].lower().replace(".", "_")
        return str(kv[1]) in message or any(flat.endswith((w, w + "s")) for w in words)

    keys.sort(key=quoted, reverse=True)  # stable: the quoted ones first, in section order
    return keys or [(section, "(all defaults)")]


@contextmanager
def explaining_failures(cfg, stage: str, section: str = None, record=None):
    """Inside: any error but a user error becomes one ConfigError line: the stage, the error, the
    record, the keys to look at."""
    try:
        yield
    except USER_ERRORS:
        raise
    except Exception as e:
        text = _text(e)
        where = f" on {record['file_name']}" if record else ""
        keys = ", ".join(f"{k}={v!r}" for k, v in suspects(cfg, e, section)[:4])
        hint = f"; check {keys}" if keys else ""
        raise ConfigError(
            f"dry run, {stage}{where}: {type(e).__name__}: {text[:300]}{hint} (DRY_RUN False "
            "skips the dry run)"
        ) from e


def _mapped(cfg, dicts, is_train: bool, stage: str):
    mapper = DatasetMapper(cfg, is_train=is_train)
    batch = []
    for record in dicts[:SAMPLE]:
        with explaining_failures(cfg, stage, "INPUT", record):
            batch.append(mapper(copy.deepcopy(record)))
    return batch


def dry_run(trainer) -> float:
    """The dry run of a ``NonLocalDefaultTrainer``, whose state it leaves as it was; its seconds."""
    from .data.loading import evaluation_dataset_dicts, training_dataset_dicts

    cfg, model = trainer.cfg, trainer.model
    start = time.perf_counter()
    batch = _mapped(cfg, training_dataset_dicts(cfg), True, "training augmentations and mapper")
    tests = {
        name: _mapped(cfg, evaluation_dataset_dicts(cfg, name), False, f"test mapper of {name}")
        for name in cfg.DATASETS.TEST
    }
    state = copy.deepcopy(model.state_dict())
    was_training = model.training
    try:
        with explaining_failures(cfg, "one training step (forward and backward)", "MODEL"):
            model.train()
            with EventStorage(0):
                losses = model(batch)
            sum(losses.values()).backward()
            bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
            if bad:
                raise FloatingPointError(f"losses {bad} are not finite at the first step")
        for name, inputs in tests.items():
            scratch = tempfile.mkdtemp(prefix="nonlocal_det_dry_run_")
            with explaining_failures(cfg, f"evaluation of {name}", "DATASETS.TEST"):
                model.eval()
                evaluator = trainer.build_evaluator(cfg, name, output_folder=scratch)
                evaluator.reset()
                with torch.no_grad():
                    for item in inputs:
                        evaluator.process([item], model([item]))
                evaluator.evaluate(img_ids=[item["image_id"] for item in inputs])
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    seconds = time.perf_counter() - start
    logger.info(f"Dry run of every stage passed in {seconds:.1f} s")
    return seconds
