"""
Checkpoints that are never left half-written by a crash, and weights loaded with errors that name
the key and the fix.
"""

import contextlib
import logging
import os
import pickle
import zipfile
from typing import List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from nonlocal_det.errors import ConfigError, MissingInputError

from .io import atomic_write

LAST_CHECKPOINT_FILE = "last_checkpoint"


class _AtomicWrites:
    """
    A path manager that writes local files with ``atomic_write`` and hands everything else
    (reads, remote paths, ``exists``, ``ls`` ...) to the path manager it wraps.
    """

    def __init__(self, path_manager):
        self.wrapped = path_manager

    def open(self, path: str, mode: str = "r", **kwargs):
        if "w" in mode and "://" not in path:
            return atomic_write(path, mode)
        return self.wrapped.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self.wrapped, name)


def write_checkpoints_atomically(checkpointer: DetectionCheckpointer) -> DetectionCheckpointer:
    """
    ``checkpointer``, made to write ``model_*.pth`` and ``last_checkpoint`` atomically, so that
    ``--resume`` after a SIGKILL or a power cut always finds the last complete checkpoint.

    fvcore's ``Checkpointer.save`` and ``tag_last_checkpoint`` open every file they write through
    the checkpointer's ``path_manager`` attribute; that attribute is wrapped (``_AtomicWrites``),
    and nothing else of the checkpointer changes. Save directories that are not local paths
    (a PathManager URL) keep their own writing.
    """
    if not isinstance(checkpointer.path_manager, _AtomicWrites):
        checkpointer.path_manager = _AtomicWrites(checkpointer.path_manager)
    return checkpointer


# What torch.load and Detectron2's pickle loader raise for a file that is not a readable checkpoint.
_UNREADABLE = (
    pickle.UnpicklingError,
    EOFError,
    RuntimeError,
    KeyError,
    ValueError,
    zipfile.BadZipFile,
)


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


@contextlib.contextmanager
def reading_weights(key: str, path: str, fix: str = "copy or download it again"):
    """Inside: a checkpoint that cannot be read raises MissingInputError naming ``key``."""
    try:
        yield
    except _UNREADABLE as e:
        raise MissingInputError(
            f"{key}={path!r} could not be read as a checkpoint ({_first_line(e)}); {fix}."
        ) from None


class _RecordingCheckpointer(DetectionCheckpointer):
    """Keeps the keys that did not load (fvcore's ``_load_model`` result) as ``incompatible``."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def _listing(names) -> str:
    names = list(names)
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def mismatch_problems(missing, unexpected, other_shape) -> List[str]:
    """The parameters a checkpoint leaves unloaded, or carries the model lacks, in words."""
    problems = []
    if other_shape:
        problems.append(f"{len(other_shape)} of another shape ({_listing(other_shape)})")
    if missing:
        problems.append(f"{len(missing)} missing ({_listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} the model does not have ({_listing(unexpected)})")
    return problems


def load_trained_weights(
    model,
    weights: str,
    *,
    random_ok: bool,
    key: str = "MODEL.WEIGHTS",
    flag: str = "--random-weights",
):
    """
    Load a trained model's weights for evaluating or reporting what the model does. Refused, with
    ConfigError, unless ``random_ok`` (the command's ``flag``): no weights (a random model's
    results mean nothing), and weights that leave any parameter of the model unloaded (missing,
    or of another shape: Detectron2 only logs "Skip loading") or carry parameters the model
    lacks (a checkpoint of another config). The message names the keys and the file.
    """
    if not weights:
        if random_ok:
            logging.getLogger(__name__).warning(f"{key} is empty: the model has random weights")
            return
        raise ConfigError(
            f"{key} is empty: this reports what a trained model does; pass the weights, or "
            f"{flag} to use a randomly initialised model on purpose."
        )
    checkpointer = _RecordingCheckpointer(model)
    with reading_weights(key, weights):
        checkpointer.load(weights)
    incompatible = checkpointer.incompatible
    problems = mismatch_problems(
        incompatible.missing_keys,
        incompatible.unexpected_keys,
        [name for name, _, _ in incompatible.incorrect_shapes],
    )
    if problems and not random_ok:
        raise ConfigError(
            f"{key}={weights!r} does not fit the config's model: parameters {'; '.join(problems)}. "
            f"Pass the config the checkpoint was trained with, or {flag} to load what fits on "
            "purpose."
        )


def check_checkpoint_file(path: str, subject: str, fix: str = "copy or download it again") -> None:
    """
    MissingInputError unless ``path`` looks like a checkpoint: a torch zip archive (``.pth``)
    whose central directory is intact, or a pickle (Detectron2's ``.pkl``, legacy ``.pth``),
    read from the file's first and last bytes only. ``subject`` names the file in the message
    (``"MODEL.WEIGHTS='model.pth'"``), ``fix`` says what to do.
    """
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path):
                return
        except (zipfile.BadZipFile, OSError) as e:
            raise MissingInputError(
                f"{subject} is a damaged checkpoint archive ({e}); {fix}."
            ) from None
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80" and head[1:2] and head[1] <= 5:  # a pickle, protocol 2..5
        return
    if head == b"PK":
        raise MissingInputError(
            f"{subject} is a truncated or damaged torch checkpoint (its zip directory is "
            f"missing); {fix}."
        )
    raise MissingInputError(
        f"{subject} is not a checkpoint (neither a torch .pth archive nor a Detectron2 .pkl "
        "pickle); pass the model_final.pth a training run wrote, or a model-zoo .pkl."
    )


def resume_checkpoint(output_dir: str) -> Optional[str]:
    """
    The checkpoint ``--resume`` continues from: the file ``output_dir/last_checkpoint`` names;
    None when there is no ``last_checkpoint`` (training then starts from the initial weights).
    MissingInputError, naming the file and the fix, when it names a file that is missing or not
    a complete checkpoint (an interrupted copy, a full disk).
    """
    tag = os.path.join(output_dir, LAST_CHECKPOINT_FILE)
    if not os.path.isfile(tag):
        return None
    with open(tag) as f:
        name = f.read().strip()
    path = os.path.join(output_dir, name)
    fix = (
        f"remove {tag} to start from the initial weights, write the name of an intact "
        f"model_*.pth of {output_dir} into it, or start without --resume"
    )
    if not name or not os.path.isfile(path):
        raise MissingInputError(
            f"--resume: {tag} names {name!r}, which is not a file in {output_dir}; {fix}."
        )
    check_checkpoint_file(path, f"--resume: {path} (named by {tag})", fix=f"remove it and {fix}")
    return path


def check_resume_fits(model, path: str, allow_unmatched: bool) -> None:
    """
    ConfigError when the checkpoint ``--resume`` continues from (``resume_checkpoint``) does
    not have exactly the model's parameters (a run of another config wrote it), naming the keys
    and the file; unless ``allow_unmatched`` (--allow-unmatched-weights). Reads the file's index
    only (memory-mapped).
    """
    with reading_weights(f"--resume: {path}", path, fix=f"remove {path} or start without --resume"):
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model"]
    own = model.state_dict()
    problems = mismatch_problems(
        [k for k in own if k not in saved],
        [k for k in saved if k not in own],
        [k for k in own if k in saved and tuple(own[k].shape) != tuple(saved[k].shape)],
    )
    if problems and not allow_unmatched:
        raise ConfigError(
            f"--resume: {path} does not fit the config's model: parameters {'; '.join(problems)}. "
            "A run of another config wrote it: give this run an OUTPUT_DIR of its own, start "
            "without --resume, or pass --allow-unmatched-weights to load what fits on purpose."
        )


def build_trained_model(cfg, random_ok: bool):
    """``build_model(cfg)`` in eval mode with MODEL.WEIGHTS loaded (``load_trained_weights``)."""
    from detectron2.modeling import build_model

    from .advice import explaining_build_errors

    with explaining_build_errors(cfg):
        model = build_model(cfg).eval()
    load_trained_weights(model, cfg.MODEL.WEIGHTS, random_ok=random_ok)
    return model
