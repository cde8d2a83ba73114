"""
What the tests share: paths, shipped configs, small models and inputs, and runs of train_net.py.

This is the one module tests import helpers from (never from another test file). It imports
without Detectron2: functions that need it import it themselves.
"""

import contextlib
import glob
import importlib.util
import json
import math
import os
import subprocess
import sys

import torch
from torch import nn

from nonlocal_det import detectron2_available

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")
TEST_CONFIG_DIR = os.path.join(REPO_ROOT, "tests", "configs")

HAS_DETECTRON2 = detectron2_available()
DETECTRON2_SKIP_REASON = (
    "needs Detectron2 (not on PyPI): install it with `python3 tools/setup_env.py "
    "[--detectron2-wheel PATH]`, see README"
)

# The YAML configs a user runs (the Base-* files are only inherited from).
SHIPPED_CONFIGS = sorted(
    os.path.basename(p)
    for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))
    if not os.path.basename(p).startswith("Base-")
)


# ---------------------------------------------------------------- data


def generate_synthetic_under(root, train: int, val: int):
    """A small nonlocal_synthetic dataset at ``root/datasets/nonlocal_synthetic`` (the layout
    train_net.py finds when run in ``root``); returns ``root``."""
    from nonlocal_det.harness.data import synthetic

    synthetic.generate(str(root / "datasets" / "nonlocal_synthetic"), {"train": train, "val": val})
    return root


@contextlib.contextmanager
def synthetic_registered_under(root, train: int, val: int):
    """``generate_synthetic_under``, with the ``nonlocal_synthetic_*`` names registered on it while
    the context lasts (the default registration is restored afterwards); yields ``root``."""
    from nonlocal_det.harness.data.generated import SYNTHETIC

    generate_synthetic_under(root, train, val)
    SYNTHETIC.register(str(root / "datasets" / "nonlocal_synthetic"))
    try:
        yield root
    finally:
        SYNTHETIC.register()


# ---------------------------------------------------------------- blocks


def randomize(block: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, including the zero-initialised norm/out, in float64."""
    gen = torch.Generator().manual_seed(seed)
    block = block.double()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(
                torch.randn(p.shape, generator=gen, dtype=p.dtype) / math.sqrt(max(p[0].numel(), 1))
            )
    return block.eval()


# ---------------------------------------------------------------- Detectron2 models


def load_cfg(config_name: str, *opts):
    """A config from configs/, on CPU, with no weights to download."""
    from nonlocal_det.harness.config import get_nonlocal_cfg

    return get_nonlocal_cfg(
        os.path.join(CONFIG_DIR, config_name), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts]
    )


def is_nonlocal_key(key: str) -> bool:
    """
    Whether a state-dict key or module name belongs to a block of the non-local family (backbone
    or keypoint head).
    """
    return (
        ".nonlocal_block" in key
        or key.startswith(("nonlocal_block", "context_block"))
        or "nonlocal_fcn" in key
        or ".context_block" in key
    )


def nonlocal_keys(model) -> set:
    return {k for k in model.state_dict() if is_nonlocal_key(k)}


def randomize_nonlocal_norms(model, value=0.5):
    """Give every non-local block's norm a non-zero weight, so they stop being identities."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if (
                name.endswith("nonlocal_block")
                or ".nonlocal_fcn" in name
                or name.startswith("nonlocal_fcn")
            ):
                if getattr(module, "norm", None) is not None:
                    module.norm.weight.fill_(value)


def load_checkpoint(model, path):
    """
    Load ``path`` into ``model`` with Detectron2's checkpointer; returns the incompatible keys.
    """
    from detectron2.checkpoint import DetectionCheckpointer

    class Recording(DetectionCheckpointer):
        def _load_model(self, checkpoint):
            self.incompatible = super()._load_model(checkpoint)
            return self.incompatible

    checkpointer = Recording(model)
    checkpointer.load(path)
    return checkpointer.incompatible


def training_input(height=96, width=128, num_classes=1, keypoints=True, seed=0):
    """One image dict with two ground-truth instances (boxes, polygon masks, keypoints)."""
    from detectron2.structures import Boxes, Instances, Keypoints, PolygonMasks

    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8).float()
    boxes = torch.tensor([[10.0, 12.0, 60.0, 80.0], [50.0, 20.0, 120.0, 70.0]])
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor([0, min(1, num_classes - 1)])
    inst.gt_masks = PolygonMasks([[b[[0, 1, 2, 1, 2, 3, 0, 3]].tolist()] for b in boxes])
    if keypoints:
        kps = torch.zeros(2, 17, 3)
        for i, b in enumerate(boxes):
            kps[i, :, 0] = torch.linspace(float(b[0]) + 2, float(b[2]) - 2, 17)
            kps[i, :, 1] = torch.linspace(float(b[1]) + 2, float(b[3]) - 2, 17)
            kps[i, :, 2] = 2
        inst.gt_keypoints = Keypoints(kps)
    return {"image": image, "instances": inst, "height": height, "width": width}


# ---------------------------------------------------------------- train_net.py

# A small, fast Mask + keypoint R-CNN on the generated dataset (for configs/mask_rcnn_R50_NL.yaml).
TINY = [
    "MODEL.WEIGHTS",
    "",
    "MODEL.MASK_ON",
    "True",
    "MODEL.KEYPOINT_ON",
    "True",
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "4",
    "MODEL.ROI_KEYPOINT_HEAD.NAME",
    "KRCNNConvDeconvUpsampleNLHead",
    "MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE",
    "0",
    "DATASETS.TRAIN",
    "('nonlocal_synthetic_train',)",
    "DATASETS.TEST",
    "('nonlocal_synthetic_val',)",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.BASE_LR",
    "0.001",
    "SOLVER.STEPS",
    "()",
    "SOLVER.CHECKPOINT_PERIOD",
    "2",
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    "192",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "192",
    "DATALOADER.NUM_WORKERS",
    "0",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "200",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "64",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    # from random weights: normalise activations (FrozenBN with identity statistics explodes)
    "MODEL.RESNETS.NORM",
    "GN",
    "MODEL.FPN.NORM",
    "GN",
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "64",
]


def run_train_net(tmp_path, *args, config="mask_rcnn_R50_NL.yaml"):
    """``python train_net.py --config-file configs/<config> args...`` in tmp_path, with datasets
    under tmp_path/datasets; ``config`` may also be an absolute path, or None for no --config-file.
    Returns (exit code, stdout + stderr)."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    config_args = ["--config-file", os.path.join(CONFIG_DIR, config)] if config else []
    cmd = [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), *config_args, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def import_train_net():
    """train_net.py as a module, for tests that use its Trainer in this process."""
    spec = importlib.util.spec_from_file_location(
        "train_net", os.path.join(REPO_ROOT, "train_net.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def training_records(output_dir):
    """
    The training records of OUTPUT_DIR/metrics.json (evaluation results are logged there too,
    without losses).
    """
    with open(os.path.join(output_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if "total_loss" in r]


def last_iteration(output_dir):
    """The last training iteration logged."""
    return max(r["iteration"] for r in training_records(output_dir))
