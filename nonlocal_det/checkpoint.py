"""A DetectionCheckpointer whose files are never left half-written by a crash."""

import contextlib
import logging
import os
import pickle
import zipfile

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .errors import ConfigError, MissingInputError
from .io import atomic_write

LAST_CHECKPOINT_FILE = "last_checkpoint"


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """
    Detectron2's checkpointer, with ``model_*.pth`` and ``last_checkpoint`` written atomically
    (:func:`atomic_write`), so that ``--resume`` after a SIGKILL or a power cut always finds the
    last complete checkpoint. Save directories that are not local paths (a PathManager URL)
    keep Detectron2's own writing.

    Everything saved is tensors, numbers, strings and containers of them, so it loads with
    ``torch.load(..., weights_only=True)`` (torch's default since 2.6).
    """

    def _is_local(self) -> bool:
        return "://" not in self.save_dir

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._is_local():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        with atomic_write(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        with atomic_write(os.path.join(self.save_dir, LAST_CHECKPOINT_FILE), "w") as f:
            f.write(last_filename_basename)


# What torch.load and Detectron2's pickle loader raise for a file that is not a readable checkpoint.
_UNREADABLE = (
    pickle.UnpicklingError,
    EOFError,
    RuntimeError,
    KeyError,
    ValueError,
    zipfile.BadZipFile,
)


@contextlib.contextmanager
def reading_weights(key: str, path: str):
    """Inside: a checkpoint that cannot be read raises MissingInputError naming ``key``."""
    try:
        yield
    except _UNREADABLE as e:
        raise MissingInputError(
            f"{key}={path!r} could not be read as a checkpoint ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}); copy or download it again."
        ) from None


class _RecordingCheckpointer(DetectionCheckpointer):
    """Keeps the keys that did not load (fvcore's ``_load_model`` result) as ``incompatible``."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_trained_weights(model, weights: str, *, random_ok: bool, key: str = "MODEL.WEIGHTS"):
    """
    Load a trained model's weights for a tool that reports what the model does. Refused, with
    ConfigError, unless ``random_ok``: no weights (a random model's pictures and numbers mean
    nothing), and weights that leave any parameter of the model unloaded (missing, or of another
    shape: Detectron2 only logs "Skip loading") or carry parameters the model lacks (a checkpoint
    of another config).
    """
    flag = "pass --random-weights to look at a randomly initialised model on purpose"
    if not weights:
        if random_ok:
            logging.getLogger(__name__).warning(f"{key} is empty: the model has random weights")
            return
        raise ConfigError(f"{key} is empty: this tool reports what a trained model does; {flag}.")
    checkpointer = _RecordingCheckpointer(model)
    with reading_weights(key, weights):
        checkpointer.load(weights)
    incompatible = checkpointer.incompatible
    problems = []
    if incompatible.incorrect_shapes:
        names = [name for name, _, _ in incompatible.incorrect_shapes]
        problems.append(f"{len(names)} of another shape ({', '.join(names[:3])})")
    if incompatible.missing_keys:
        problems.append(
            f"{len(incompatible.missing_keys)} missing ({', '.join(incompatible.missing_keys[:3])})"
        )
    if incompatible.unexpected_keys:
        problems.append(
            f"{len(incompatible.unexpected_keys)} the model does not have "
            f"({', '.join(incompatible.unexpected_keys[:3])})"
        )
    if problems and not random_ok:
        raise ConfigError(
            f"{key}={weights!r} does not fit the config's model: parameters {'; '.join(problems)}. "
            f"Pass the config the checkpoint was trained with, or {flag}."
        )
