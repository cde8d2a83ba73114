"""Files written whole or not at all: checkpoints, generated datasets, run summaries."""

import contextlib
import json
import os


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb"):
    """A temporary file moved onto ``path`` once complete and on disk: a process killed while
    writing leaves ``path`` as it was, and at worst a stray ``path.tmp-<pid>``."""
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


def write_json(path: str, obj, **dump_kwargs) -> None:
    """``json.dump(obj)`` to ``path`` through :func:`atomic_write`, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(obj, f, **dump_kwargs)


def listing(names, shown: int = 3) -> str:
    """'a, b, c and 4 more': the first ``shown`` names and a count of the rest."""
    names = list(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(str(n) for n in names[:shown]) + more


def is_int(v) -> bool:
    """An int that is not a bool (JSON and YAML give both)."""
    return isinstance(v, int) and not isinstance(v, bool)
