"""Up-front checks of a config's inputs, so that a missing file gives a message, not a traceback."""
import os

from detectron2.utils.file_io import PathManager

from .checkpoint import LAST_CHECKPOINT_FILE


class MissingInputError(RuntimeError):
    """A weight file or dataset that cannot be found or downloaded."""


class BadDataError(RuntimeError):
    """A dataset whose files or annotations cannot be used as they are."""


class UnsupportedSetupError(RuntimeError):
    """A config this machine cannot run as asked."""


AMP_PRECISIONS = ("float16", "bfloat16")


def check_amp(cfg) -> None:
    """Detectron2's AMPTrainer needs CUDA and a half-precision dtype: say so before training."""
    if not cfg.SOLVER.AMP.ENABLED:
        return
    if cfg.SOLVER.AMP.PRECISION not in AMP_PRECISIONS:
        raise UnsupportedSetupError(
            f"SOLVER.AMP.PRECISION={cfg.SOLVER.AMP.PRECISION!r} is not one of {AMP_PRECISIONS}."
        )
    if cfg.MODEL.DEVICE == "cpu":
        raise UnsupportedSetupError(
            "SOLVER.AMP.ENABLED=True needs a CUDA device (Detectron2's AMPTrainer runs on CUDA only) and "
            "this run is on the CPU. Pass `SOLVER.AMP.ENABLED False`, or run on a machine with a GPU."
        )


def check_weights(cfg, resume: bool):
    """Fetch MODEL.WEIGHTS now, so an offline machine gets a message rather than a traceback."""
    weights = cfg.MODEL.WEIGHTS
    if not weights or (resume and PathManager.exists(os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT_FILE))):
        return
    try:
        local = PathManager.get_local_path(weights)
    except Exception as e:  # any downloader failure: offline, DNS, HTTP, proxy
        raise MissingInputError(
            f"MODEL.WEIGHTS={weights!r} could not be found or downloaded ({type(e).__name__}: {e}). "
            "If this machine is offline, download the file elsewhere and pass its path: "
            "`MODEL.WEIGHTS /path/to/file.pkl`, or `MODEL.WEIGHTS ''` to start from random weights."
        ) from None
    if not os.path.isfile(local):
        raise MissingInputError(f"MODEL.WEIGHTS={weights!r}: {local} is not a file. Pass an existing checkpoint.")
