"""
The rules a config's values must meet, checked when it is loaded, so that a bad value stops the run
in one line before anything is built: ``YAML_DOMAINS`` / ``LAZY_DOMAINS`` (values no Detectron2
builder checks) and ``CROSS_FIELD_RULES`` (values that must agree); keys a config lacks are skipped.
``nonlocal_det.harness.docs`` lists the rules in docs/reliability.md.
"""

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

import torch

from nonlocal_det.errors import ConfigError
from nonlocal_det.layers.cgnl_block import max_taylor_order

from .io import is_int as _is_int


@dataclass(frozen=True)
class Domain:
    """A set of values, as a test and the words that name it in errors."""

    description: str
    contains: Callable[[Any], bool]


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def ints(low: int, high: int = None) -> Domain:
    words = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    return Domain(words, lambda v: _is_int(v) and v >= low and (high is None or v <= high))


def numbers(low: float, high: float = None, *, low_open=False, high_open=False) -> Domain:
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    words = f"a finite number in {left}{low}, {high}{right}"
    if high is None:
        words = f"a finite number {'>' if low_open else '>='} {low}"

    def contains(v):
        above = _is_number(v) and (v > low if low_open else v >= low)
        return above and (high is None or (v < high if high_open else v <= high))

    return Domain(words, contains)


def sequence_of(item: Domain, *, min_len: int = 0, increasing: bool = False) -> Domain:
    words = f"a list of {min_len} or more values, each {item.description}"
    if increasing:
        words += ", in increasing order"

    def contains(v):
        if not isinstance(v, (list, tuple)) or len(v) < min_len:
            return False
        if not all(item.contains(x) for x in v):
            return False
        return not increasing or all(a < b for a, b in zip(v, v[1:]))

    return Domain(words, contains)


def _device(v) -> bool:
    return isinstance(v, str) and re.fullmatch(r"cpu|cuda(:\d+)?", v) is not None


POSITIVE_INT = ints(1)
NON_NEGATIVE_INT = ints(0)
PROBABILITY = numbers(0.0, 1.0)
FRACTION = numbers(0.0, 1.0, low_open=True)
STAGES = ("res2", "res3", "res4", "res5")


def _all(domain: Domain, keys: str) -> Dict[str, Domain]:
    """{key: domain} for the whitespace-separated ``keys``."""
    return dict.fromkeys(keys.split(), domain)


YAML_DOMAINS: Dict[str, Domain] = {
    "MODEL.DEVICE": Domain("'cpu', 'cuda' or 'cuda:N'", _device),
    "MODEL.PIXEL_STD": sequence_of(numbers(0.0, low_open=True), min_len=1),
    "MODEL.PIXEL_MEAN": sequence_of(Domain("a finite number", _is_number), min_len=1),
    "MODEL.BACKBONE.FREEZE_AT": ints(0, 5),
    **_all(
        POSITIVE_INT,
        """MODEL.RPN.BATCH_SIZE_PER_IMAGE MODEL.RPN.PRE_NMS_TOPK_TRAIN MODEL.RPN.PRE_NMS_TOPK_TEST
        MODEL.RPN.POST_NMS_TOPK_TRAIN MODEL.RPN.POST_NMS_TOPK_TEST MODEL.ROI_HEADS.NUM_CLASSES
        MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE MODEL.RETINANET.NUM_CLASSES
        MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS MODEL.ROI_KEYPOINT_HEAD.NONLOCAL_EVERY
        MODEL.NONLOCAL.REDUCTION MODEL.NONLOCAL.CGNL.GROUPS INPUT.MAX_SIZE_TRAIN
        INPUT.MAX_SIZE_TEST SOLVER.IMS_PER_BATCH SOLVER.MAX_ITER SOLVER.CHECKPOINT_PERIOD
        TEST.DETECTIONS_PER_IMAGE""",
    ),
    **_all(
        NON_NEGATIVE_INT,
        """MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE MODEL.ROI_KEYPOINT_HEAD.NUM_NONLOCAL
        INPUT.MIN_SIZE_TEST DATALOADER.NUM_WORKERS SOLVER.WARMUP_ITERS
        SOLVER.REFERENCE_WORLD_SIZE TEST.EVAL_PERIOD VIS_PERIOD""",
    ),
    **_all(FRACTION, "MODEL.RPN.POSITIVE_FRACTION MODEL.ROI_HEADS.POSITIVE_FRACTION"),
    **_all(
        PROBABILITY,
        """MODEL.RPN.NMS_THRESH MODEL.ROI_HEADS.SCORE_THRESH_TEST MODEL.ROI_HEADS.NMS_THRESH_TEST
        MODEL.RETINANET.SCORE_THRESH_TEST SOLVER.WARMUP_FACTOR""",
    ),
    **_all(
        numbers(0.0, low_open=True),
        """MODEL.NONLOCAL.CGNL.GAMMA MODEL.NONLOCAL.DNL.TEMPERATURE SOLVER.BASE_LR
        SOLVER.BIAS_LR_FACTOR SOLVER.GAMMA SOLVER.CLIP_GRADIENTS.CLIP_VALUE""",
    ),
    **_all(
        numbers(0.0),
        "DATALOADER.REPEAT_THRESHOLD SOLVER.BASE_LR_END SOLVER.WEIGHT_DECAY "
        "SOLVER.WEIGHT_DECAY_NORM",
    ),
    **_all(sequence_of(ints(-1000)), " ".join(f"MODEL.NONLOCAL.{s.upper()}" for s in STAGES)),
    "MODEL.NONLOCAL.CGNL.ORDER": ints(0, max_taylor_order(torch.float32)),
    "MODEL.NONLOCAL.GC.STAGES": Domain(
        f"a list of distinct stages from {list(STAGES)}",
        lambda v: (
            isinstance(v, (list, tuple)) and all(s in STAGES for s in v) and len(set(v)) == len(v)
        ),
    ),
    "MODEL.NONLOCAL.GC.RATIO": numbers(0.0, 1.0, low_open=True),
    "MODEL.NONLOCAL.GC.FUSION": Domain(
        "a non-empty list of distinct values from ['channel_add', 'channel_mul']",
        lambda v: (
            isinstance(v, (list, tuple))
            and 0 < len(set(v)) == len(v)
            and all(f in ("channel_add", "channel_mul") for f in v)
        ),
    ),
    "INPUT.MIN_SIZE_TRAIN": sequence_of(POSITIVE_INT, min_len=1),
    "SOLVER.MOMENTUM": numbers(0.0, 1.0, high_open=True),
    "SOLVER.STEPS": sequence_of(NON_NEGATIVE_INT, increasing=True),
    "SEED": ints(-(2**31), 2**32 - 1),
}

LAZY_DOMAINS: Dict[str, Domain] = {
    "train.device": YAML_DOMAINS["MODEL.DEVICE"],
    "train.max_iter": POSITIVE_INT,
    "train.eval_period": NON_NEGATIVE_INT,
    "train.log_period": POSITIVE_INT,
    "train.checkpointer.period": POSITIVE_INT,
    "train.seed": YAML_DOMAINS["SEED"],
    "optimizer.lr": YAML_DOMAINS["SOLVER.BASE_LR"],
    "optimizer.momentum": YAML_DOMAINS["SOLVER.MOMENTUM"],
    "optimizer.weight_decay": YAML_DOMAINS["SOLVER.WEIGHT_DECAY"],
    "dataloader.train.total_batch_size": POSITIVE_INT,
    "dataloader.train.num_workers": NON_NEGATIVE_INT,
    "dataloader.test.num_workers": NON_NEGATIVE_INT,
}

MISSING = object()


def is_yaml(cfg) -> bool:
    """A YAML config (Detectron2's CfgNode), rather than a LazyConfig (omegaconf's DictConfig)."""
    from detectron2.config import CfgNode

    return isinstance(cfg, CfgNode)


def lookup(cfg, dotted_key: str, default=MISSING):
    """The value at ``"MODEL.RPN.IN_FEATURES"`` of a CfgNode or DictConfig; ``default`` if none."""
    node = cfg
    for part in dotted_key.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError, IndexError):
            return default
    return node


@dataclass(frozen=True)
class Rule:
    """Values of several keys that must agree: ``problem(cfg)`` says how they do not, or None."""

    keys: tuple
    description: str
    problem: Callable[[Any], Any]


def _sizes(cfg, low: str, high: str):
    lows = lookup(cfg, low)
    lows = list(lows) if isinstance(lows, (list, tuple)) else [lows]
    if lookup(cfg, high) < max(lows):
        return f"{high}={lookup(cfg, high)} is below {low}={lookup(cfg, low)}"


CROSS_FIELD_RULES = (
    Rule(
        ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"),
        "as many values in each (one per input channel)",
        lambda c: (
            len(c.MODEL.PIXEL_MEAN) != len(c.MODEL.PIXEL_STD)
            and f"MODEL.PIXEL_MEAN has {len(c.MODEL.PIXEL_MEAN)} values and MODEL.PIXEL_STD "
            f"{len(c.MODEL.PIXEL_STD)}"
        ),
    ),
    Rule(
        ("INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN"),
        "MAX_SIZE_TRAIN at least the largest MIN_SIZE_TRAIN (else no image gets its short side)",
        lambda c: _sizes(c, "INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN"),
    ),
    Rule(
        ("INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST"),
        "MAX_SIZE_TEST at least MIN_SIZE_TEST",
        lambda c: _sizes(c, "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST"),
    ),
    Rule(
        ("INPUT.MIN_SIZE_TRAIN_SAMPLING", "INPUT.MIN_SIZE_TRAIN"),
        "sampling 'range' draws between two sizes: MIN_SIZE_TRAIN holds exactly two",
        lambda c: (
            c.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range"
            and len(c.INPUT.MIN_SIZE_TRAIN) != 2
            and f"INPUT.MIN_SIZE_TRAIN_SAMPLING='range' with INPUT.MIN_SIZE_TRAIN="
            f"{c.INPUT.MIN_SIZE_TRAIN} ({len(c.INPUT.MIN_SIZE_TRAIN)} values)"
        ),
    ),
)


def config_problems(cfg) -> List[str]:
    """'KEY=value: must be <domain>' for every value outside its domain, then every cross-field
    rule that fails ('<how>: <rule>'); the rules run once every value is in its domain."""
    yaml = is_yaml(cfg)
    problems = []
    for key, domain in (YAML_DOMAINS if yaml else LAZY_DOMAINS).items():
        value = lookup(cfg, key)
        if value is not MISSING and not domain.contains(value):
            problems.append(f"{key}={value!r}: must be {domain.description}")
    if yaml and not problems:
        for rule in CROSS_FIELD_RULES:
            if all(lookup(cfg, k) is not MISSING for k in rule.keys) and rule.problem(cfg):
                problems.append(f"{rule.problem(cfg)}: must be {rule.description}")
    return problems


def check_config(cfg, where: str = "the config") -> None:
    """ConfigError listing every problem of ``config_problems``."""
    problems = config_problems(cfg)
    if len(problems) == 1:
        raise ConfigError(f"{where}: {problems[0]}")
    if problems:
        raise ConfigError(f"{where}: {len(problems)} problems: " + "; ".join(problems))
