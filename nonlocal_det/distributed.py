"""Multi-process training on CPUs (gloo) with Detectron2's DefaultTrainer and launch."""
import contextlib

import detectron2.engine.defaults as d2_defaults
import detectron2.utils.comm as comm
from torch import nn

from .checks import UnsupportedSetupError


@contextlib.contextmanager
def cpu_ddp_support():
    """
    Inside this context, Detectron2's ``create_ddp_model`` wraps CPU models correctly.

    It passes ``device_ids=[local rank]``, which DistributedDataParallel accepts only for a
    model on that GPU; a CPU model must get ``device_ids=None``. DefaultTrainer calls it in
    its constructor, so build the trainer inside this context.
    """
    original = d2_defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


_NORM_KEYS = ("MODEL.NONLOCAL.NORM", "MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM",
              "MODEL.ROI_MASK_HEAD.NORM")  # fmt: skip


def check_sync_bn_device(cfg, model: nn.Module) -> None:
    """
    torch's SyncBatchNorm ("SyncBN" / "nnSyncBN") synchronises only CUDA tensors: in a CPU run of
    several processes its first forward fails. Say so at build time, with the keys to change.
    """
    if comm.get_world_size() == 1 or cfg.MODEL.DEVICE != "cpu":
        return
    if not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        return
    keys = [k for k in _NORM_KEYS if _get(cfg, k) in ("SyncBN", "nnSyncBN")]
    raise UnsupportedSetupError(
        f"{', '.join(f'{k}={_get(cfg, k)!r}' for k in keys) or 'A norm'}: torch's SyncBatchNorm runs on CUDA "
        "only, and this is a multi-process CPU run. Use Detectron2's all-reduce version, which works "
        "with gloo: " + " ".join(f"{k} naiveSyncBN_N" for k in keys or ["MODEL.NONLOCAL.NORM"])
        + " (the _N variant weights each process by its batch size, which differs between processes "
        "in RoI heads)."
    )


def _get(cfg, dotted_key: str):
    node = cfg
    for part in dotted_key.split("."):
        node = node.get(part) if node is not None else None
    return node
