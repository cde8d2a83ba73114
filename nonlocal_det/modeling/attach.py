"""
Attaching a non-local block after an existing residual block without renaming any of its
parameters, so that stock checkpoints load with only the new keys missing.
"""
from torch import nn

_WITH_NONLOCAL_CLASSES = {}


class _RunsNonLocalAfter:
    """Mixin: the block's own forward, then its ``nonlocal_block`` on the result."""

    def forward(self, x):
        return self.nonlocal_block(super().forward(x))


def block_class_with_nonlocal(block_class: type) -> type:
    """The subclass of ``block_class`` whose forward ends with its ``nonlocal_block``."""
    if block_class not in _WITH_NONLOCAL_CLASSES:
        _WITH_NONLOCAL_CLASSES[block_class] = type(
            f"NonLocal{block_class.__name__}",
            (_RunsNonLocalAfter, block_class),
            {"__module__": __name__, "__doc__": f"{block_class.__name__} followed by a non-local block."},
        )
    return _WITH_NONLOCAL_CLASSES[block_class]


def has_nonlocal(block: nn.Module) -> bool:
    return isinstance(block, _RunsNonLocalAfter)


def attach_nonlocal(block: nn.Module, nonlocal_block: nn.Module) -> nn.Module:
    """
    Make ``block`` run ``nonlocal_block`` on its output, in place.

    The block keeps its class's behaviour and every parameter name; the new parameters
    appear under ``<block>.nonlocal_block.*``. Works for any block type (BasicBlock,
    BottleneckBlock, DeformBottleneckBlock, ResNeXt bottlenecks, user blocks): the block's
    class is swapped for a subclass whose forward ends with the non-local block, so
    ``isinstance(block, type_before)`` still holds.
    """
    if has_nonlocal(block):
        raise ValueError(f"{type(block).__name__} already has a non-local block attached")
    block.add_module("nonlocal_block", nonlocal_block)
    block.__class__ = block_class_with_nonlocal(type(block))
    return block
