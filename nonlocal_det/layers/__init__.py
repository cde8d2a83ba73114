"""Non-local blocks; importable and usable without Detectron2."""

from .cgnl_block import CGNL_KERNELS, CGNLBlock2d
from .nonlocal_block import NONLOCAL_MODES, NonLocalBlock2d
from .residual import RESIDUAL_INITS

__all__ = ["NonLocalBlock2d", "CGNLBlock2d", "NONLOCAL_MODES", "CGNL_KERNELS", "RESIDUAL_INITS"]
