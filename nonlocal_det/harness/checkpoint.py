"""
Checkpoints: written whole or not at all, loaded with errors that name the key and the fix, and
resumed truthfully, through Detectron2's checkpointer (``CheckedCheckpointer``).
"""

import contextlib
import logging
import os
import pickle
import zipfile
from typing import Dict, List, Optional

from detectron2.checkpoint import DetectionCheckpointer

from nonlocal_det.errors import ConfigError, MissingInputError

from .io import atomic_write, listing

logger = logging.getLogger(__name__)


class _AtomicWrites:
    """A path manager writing local files with ``atomic_write``; all else: the wrapped one."""

    def __init__(self, path_manager):
        self.wrapped = path_manager

    def open(self, path: str, mode: str = "r", **kwargs):
        if "w" in mode and "://" not in path:
            return atomic_write(path, mode)
        return self.wrapped.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self.wrapped, name)


class CheckedCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, writing atomically (fvcore opens files via ``path_manager``) so
    that --resume after a SIGKILL finds a whole checkpoint; ``incompatible``: its last load's."""

    def __init__(self, model, save_dir: str = "", **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.path_manager = _AtomicWrites(self.path_manager)
        self.incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    def problems(self) -> List[str]:
        """The parameters the last load left unloaded or could not place, in words."""
        if self.incompatible is None:
            return []
        report = self.incompatible
        shapes = [name for name, _, _ in report.incorrect_shapes]
        return [
            f"{len(names)} {words} ({listing(names)})"
            for names, words in (
                (shapes, "of another shape"),
                (report.missing_keys, "missing"),
                (report.unexpected_keys, "the model does not have"),
            )
            if names
        ]


# What torch.load and Detectron2's pickle loader raise for a file that is not a readable checkpoint.
_UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, ValueError)


@contextlib.contextmanager
def reading_weights(key: str, path: str, fix: str = "copy or download it again"):
    """Inside: a checkpoint that cannot be read raises MissingInputError naming ``key``."""
    try:
        yield
    except _UNREADABLE + (zipfile.BadZipFile,) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        first = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        raise MissingInputError(
            f"{key}={path!r} could not be read as a checkpoint ({first}); {fix}."
        ) from None


def load_trained_weights(
    model, weights: str, *, random_ok: bool, key: str = "MODEL.WEIGHTS", flag="--random-weights"
):
    """Load a trained model's weights to report what it does; unless ``random_ok`` (``flag``),
    ConfigError for none (a random model's results mean nothing) or ones that do not fit."""
    if not weights:
        if random_ok:
            logger.warning(f"{key} is empty: the model has random weights")
            return
        raise ConfigError(
            f"{key} is empty: this reports what a trained model does; pass the weights, or "
            f"{flag} to use a randomly initialised model on purpose."
        )
    checkpointer = CheckedCheckpointer(model)
    with reading_weights(key, weights):
        checkpointer.load(weights)
    problems = checkpointer.problems()
    if problems and not random_ok:
        raise ConfigError(
            f"{key}={weights!r} does not fit the config's model: parameters {'; '.join(problems)}. "
            f"Pass the config the checkpoint was trained with, or {flag} to load what fits on "
            "purpose."
        )


def check_checkpoint_file(path: str, subject: str, fix: str = "copy or download it again") -> None:
    """MissingInputError naming ``subject`` unless ``path`` looks like a checkpoint from its ends: a
    torch zip archive with its central directory, or a pickle (.pkl, old .pth)."""
    if not os.path.isfile(path):
        raise MissingInputError(f"{subject} is not a file; {fix}.")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path):
                return
        with open(path, "rb") as f:
            head = f.read(2)
    except (zipfile.BadZipFile, OSError) as e:
        raise MissingInputError(f"{subject} cannot be read as a checkpoint ({e}); {fix}.") from None
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


def resumed_checkpoint(checkpointer: DetectionCheckpointer) -> Optional[str]:
    """The checkpoint ``--resume`` continues from, or None; MissingInputError, with the fix, when
    ``last_checkpoint`` names a file that is missing or not a whole checkpoint."""
    if not checkpointer.has_checkpoint():
        return None
    path = checkpointer.get_checkpoint_file()
    check_checkpoint_file(
        path,
        f"--resume: {path} (named by {checkpointer.save_dir}/last_checkpoint)",
        fix=f"remove {checkpointer.save_dir}/last_checkpoint to start from the initial weights, "
        "write the name of an intact model_*.pth into it, or start without --resume",
    )
    return path


def load_evaluated_weights(model, args, output_dir: str, key: str, weights: str) -> None:
    """train_net.py --eval-only: the weights of ``--resume``'s checkpoint, else ``key``'s."""
    path = resumed_checkpoint(DetectionCheckpointer(model, output_dir)) if args.resume else None
    load_trained_weights(
        model,
        path or weights,
        random_ok=args.allow_unmatched_weights,
        key="--resume: checkpoint" if path else key,
        flag="--allow-unmatched-weights",
    )


def require_fit(checkpointer: CheckedCheckpointer, path: str, allow_unmatched: bool) -> None:
    """ConfigError when the checkpoint ``--resume`` loaded did not fit the model exactly."""
    problems = checkpointer.problems()
    if problems and not allow_unmatched:
        raise ConfigError(
            f"--resume: {path} does not fit the config's model: parameters {'; '.join(problems)}. "
            "A run of another config wrote it: give this run an OUTPUT_DIR of its own, start "
            "without --resume, or pass --allow-unmatched-weights to load what fits on purpose."
        )


def optimizer_settings(optimizer, scheduler=None) -> Dict:
    """The hyperparameters a resumed optimizer and LR scheduler state overrides, per group."""
    settings = {
        f"group {i} {k}": v
        for i, group in enumerate(optimizer.param_groups)
        for k, v in group.items()
        if k not in ("params", "lr")
    }
    for i, base_lr in enumerate(getattr(scheduler, "base_lrs", [])):
        settings[f"group {i} base_lr"] = base_lr
    return settings


def keep_config_settings(optimizer, scheduler, configured: Dict, path: str) -> None:
    """After --resume loaded ``path``: put back (and log) the config's settings it changed
    (``configured``), so that what runs is what config.yaml records; the iteration stays."""
    resumed = optimizer_settings(optimizer, scheduler)
    changed = [k for k in configured if resumed.get(k) != configured[k]]
    if not changed:
        return
    for name in changed:
        _, index, field = name.split(" ")
        if field == "base_lr":
            scheduler.base_lrs[int(index)] = configured[name]
        else:
            optimizer.param_groups[int(index)][field] = configured[name]
    if scheduler is not None:
        for group, lr in zip(optimizer.param_groups, scheduler.get_lr()):
            group["lr"] = lr
    changes = listing([f"{k} {resumed.get(k)!r} -> {configured[k]!r}" for k in changed], 6)
    logger.warning(
        f"--resume: {path} held other optimizer settings than the config; the config's apply "
        + changes
    )


@contextlib.contextmanager
def resuming(checkpointer, resume: bool, initial, optimizer, scheduler, allow_unmatched: bool):
    """Around a trainer's ``resume_or_load``, yielding the resumed checkpoint or None: unreadable
    weights are named, and a resumed checkpoint must fit and gives way to the config's settings."""
    path = resumed_checkpoint(checkpointer) if resume else None
    configured = optimizer_settings(optimizer, scheduler)
    key, source = ("--resume: checkpoint", path) if path else initial
    with reading_weights(key, source):
        yield path
    if path is not None:
        require_fit(checkpointer, path, allow_unmatched)
        keep_config_settings(optimizer, scheduler, configured, path)


def build_trained_model(cfg, random_ok: bool):
    """``build_model(cfg)`` in eval mode with MODEL.WEIGHTS loaded (``load_trained_weights``)."""
    from detectron2.modeling import build_model

    from .advice import explaining_build_errors

    with explaining_build_errors(cfg):
        model = build_model(cfg).eval()
    load_trained_weights(model, cfg.MODEL.WEIGHTS, random_ok=random_ok)
    return model
