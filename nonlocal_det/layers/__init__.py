"""Non-local blocks and their successors; importable and usable without Detectron2."""

from .cgnl_block import CGNL_KERNELS, CGNLBlock2d
from .context_block import GC_FUSIONS, GC_POOLINGS, GlobalContextBlock2d
from .disentangled_block import DisentangledNonLocal2d
from .nonlocal_block import NONLOCAL_MODES, NonLocalBlock2d
from .residual import INIT_ADVICE, RESIDUAL_INITS

__all__ = [
    "NonLocalBlock2d",
    "CGNLBlock2d",
    "DisentangledNonLocal2d",
    "GlobalContextBlock2d",
    "NONLOCAL_MODES",
    "CGNL_KERNELS",
    "GC_POOLINGS",
    "GC_FUSIONS",
    "RESIDUAL_INITS",
    "INIT_ADVICE",
]
