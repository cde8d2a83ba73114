"""Up-front checks of a config's inputs (YAML or LazyConfig): a message, not a traceback."""

import logging
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from nonlocal_det.errors import BadDataError as BadDataError  # re-exported: data.loading, tests
from nonlocal_det.errors import ConfigError, MissingInputError, UnsupportedSetupError

from .checkpoint import check_checkpoint_file, resumed_checkpoint
from .config_rules import is_yaml

AMP_PRECISIONS = ("float16", "bfloat16")


def amp_settings(cfg):
    """(enabled, precision, device, key prefix) of mixed precision: SOLVER.AMP.* / train.amp.*."""
    if is_yaml(cfg):
        return cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.PRECISION, cfg.MODEL.DEVICE, "SOLVER.AMP."
    amp = cfg.train.amp
    return amp.enabled, amp.get("precision", "float16"), cfg.train.device, "train.amp."


def check_amp(cfg) -> None:
    """Detectron2's AMPTrainer needs CUDA and a half-precision dtype: say so before training."""
    enabled, precision, device, prefix = amp_settings(cfg)
    if not enabled:
        return
    yaml = is_yaml(cfg)
    if precision not in AMP_PRECISIONS:
        key = f"{prefix}{'PRECISION' if yaml else 'precision'}"
        raise UnsupportedSetupError(f"{key}={precision!r} is not one of {AMP_PRECISIONS}.")
    if device == "cpu":
        key = f"{prefix}{'ENABLED' if yaml else 'enabled'}"
        off = f"{key} False" if yaml else f"{key}=False"
        raise UnsupportedSetupError(
            f"{key}=True needs a CUDA device (Detectron2's AMPTrainer runs on CUDA only) and this "
            f"run is on the CPU. Pass `{off}`, or run on a machine with a GPU."
        )


def check_weights(cfg, resume: bool):
    """Fetch the initial weights now, so that an offline machine gets a message, not a traceback;
    with ``resume``, check the resumed checkpoint instead when there is one."""
    if is_yaml(cfg):
        weights, key, output_dir = cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", cfg.OUTPUT_DIR
    else:
        train = cfg.train
        weights, key, output_dir = train.init_checkpoint, "train.init_checkpoint", train.output_dir
    if resume:
        if resumed_checkpoint(DetectionCheckpointer(None, output_dir)) is not None:
            return
        logging.getLogger("nonlocal_det").info(
            f"--resume: {os.path.join(output_dir, 'last_checkpoint')} does not exist: "
            f"starting from {key}={weights!r}"
        )
    if not weights:
        return
    try:
        local = PathManager.get_local_path(weights)
    except Exception as e:  # any downloader failure: offline, DNS, HTTP, proxy
        sep = " " if key == "MODEL.WEIGHTS" else "="
        raise MissingInputError(
            f"{key}={weights!r} could not be found or downloaded ({type(e).__name__}: {e}). "
            f"If this machine is offline, download the file elsewhere and pass its path: "
            f"`{key}{sep}/path/to/file.pkl`, or `{key}{sep}''` to start from random weights."
        ) from None
    if not os.path.isfile(local):
        raise MissingInputError(
            f"{key}={weights!r}: {local} is not a file. Pass an existing checkpoint."
        )
    check_checkpoint_file(local, f"{key}={local!r}")


def check_output_dir(path: str, key: str) -> None:
    """ConfigError unless ``path`` is a folder that exists or can be created, and can be written."""
    if "://" in path:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{key}={path!r} is a file, not a folder; name a folder for the outputs.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"{key}={path!r} cannot be created ({e.strerror or e}); name a folder you can write."
        ) from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{key}={path!r} is not writable; name a folder you can write.")


def check_world_size(batch: int, key: str, world_size: int) -> None:
    """Detectron2 splits the batch evenly over the processes: say so before it asserts."""
    if batch % world_size:
        raise ConfigError(
            f"{key}={batch} does not split over {world_size} processes (--num-gpus x "
            f"--num-machines); use a multiple of {world_size}."
        )
