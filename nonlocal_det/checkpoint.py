"""A DetectionCheckpointer whose files are never left half-written by a crash."""

import contextlib
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

LAST_CHECKPOINT_FILE = "last_checkpoint"


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb"):
    """
    Open a temporary file next to ``path`` for writing and move it onto ``path`` only once it is
    complete and on disk. A process killed while writing leaves ``path`` as it was (the old
    file, or none) and at worst a stray ``path.tmp-<pid>``, which nothing reads.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows when both are on one filesystem
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


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
