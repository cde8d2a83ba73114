"""Whether Detectron2 is importable, and the error raised when it is needed but missing."""

import importlib

DETECTRON2_INSTALL_URL = "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"


def detectron2_available() -> bool:
    try:
        importlib.import_module("detectron2")
    except ImportError:
        return False
    return True


def require_detectron2(what: str):
    """
    Import and return ``detectron2``, or raise ImportError saying that ``what`` needs it and
    how to install it (it is not on PyPI).
    """
    try:
        return importlib.import_module("detectron2")
    except ImportError as e:
        raise ImportError(
            f"{what} needs Detectron2, which is not installed in this Python "
            f"({e}). Detectron2 is not on PyPI: install it from its official instructions, "
            f"{DETECTRON2_INSTALL_URL} (e.g. build it from a clone with "
            "`python -m pip install --no-build-isolation -e detectron2`). "
            "nonlocal_det.layers works without it."
        ) from e
