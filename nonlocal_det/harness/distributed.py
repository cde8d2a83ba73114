"""Multi-process training on CPUs (gloo) with Detectron2's trainers and launch."""

import contextlib

import detectron2.engine.defaults as d2_defaults
import detectron2.utils.comm as comm
from torch import nn

from nonlocal_det.errors import UnsupportedSetupError

from .config_rules import lookup


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """Detectron2's ``create_ddp_model``, which passes ``device_ids=[local rank]``, accepted by
    DDP only for a model on that GPU; a CPU model gets ``device_ids=None``."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _DETECTRON2_CREATE_DDP_MODEL(model, **kwargs)


_DETECTRON2_CREATE_DDP_MODEL = d2_defaults.create_ddp_model


@contextlib.contextmanager
def cpu_ddp_support():
    """Inside: ``DefaultTrainer.__init__`` wraps CPU models correctly. Detectron2-internal: it calls
    the module-level ``detectron2.engine.defaults.create_ddp_model`` and takes nothing that reaches
    it, so that global is replaced by ``create_ddp_model`` above while a trainer is built."""
    if getattr(d2_defaults, "create_ddp_model", None) is not _DETECTRON2_CREATE_DDP_MODEL:
        raise RuntimeError(
            "detectron2.engine.defaults.create_ddp_model is not the function nonlocal_det knows; "
            "this Detectron2 differs from the one nonlocal_det supports (see "
            "tests/test_detectron2_internals.py)."
        )
    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = _DETECTRON2_CREATE_DDP_MODEL


_NORM_KEYS = (
    "MODEL.NONLOCAL.NORM",
    "MODEL.RESNETS.NORM",
    "MODEL.FPN.NORM",
    "MODEL.ROI_BOX_HEAD.NORM",
    "MODEL.ROI_MASK_HEAD.NORM",
)


def check_sync_bn_device(cfg, model: nn.Module) -> None:
    """torch's SyncBatchNorm ("SyncBN" / "nnSyncBN") synchronises only CUDA tensors, so a CPU run
    of several processes fails at its first forward: say so at build time, with the fix."""
    device = lookup(cfg, "MODEL.DEVICE", None) or lookup(cfg, "train.device", None)
    sync_bn = any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    if comm.get_world_size() == 1 or device != "cpu" or not sync_bn:
        return
    keys = [k for k in _NORM_KEYS if lookup(cfg, k, None) in ("SyncBN", "nnSyncBN")]
    if keys:
        problem = ", ".join(f"{k}={lookup(cfg, k, None)!r}" for k in keys)
        fix = " ".join(f"{k} naiveSyncBN_N" for k in keys)
    else:
        problem, fix = "A norm of the model", "norm='naiveSyncBN_N' where the config has 'SyncBN'"
        if lookup(cfg, "MODEL", None):
            fix = "MODEL.NONLOCAL.NORM naiveSyncBN_N"
    raise UnsupportedSetupError(
        f"{problem}: torch's SyncBatchNorm runs on CUDA only, and this is a multi-process CPU run. "
        f"Use Detectron2's all-reduce version, which works with gloo: {fix} (the _N variant "
        "weights each process by its batch size, which differs between processes in RoI heads)."
    )
