"""
Detectron2's residual blocks followed by a non-local block.

``NonLocalBasicBlock``, ``NonLocalBottleneckBlock`` (ResNeXt too: it is the bottleneck with
groups) and ``NonLocalDeformBottleneckBlock`` take their parent's arguments plus
``nonlocal_block``, a built module. The parent's parameters keep their names and the new ones
sit under ``nonlocal_block.*``, so in ``res4.21`` of a ResNet the block's checkpoint keys are
``res4.21.conv1.weight`` ... and ``res4.21.nonlocal_block.theta.weight`` ...; a stock
checkpoint loads with only the ``nonlocal_block`` keys missing. ``CNNBlockBase.freeze`` (what
``ResNet`` calls for the stages below FREEZE_AT) freezes the non-local block with the rest.
"""

from typing import Dict

from detectron2.layers import CNNBlockBase
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, DeformBottleneckBlock
from torch import nn

from ..errors import ConfigError

__all__ = [
    "NonLocalMixin",
    "NonLocalBasicBlock",
    "NonLocalBottleneckBlock",
    "NonLocalDeformBottleneckBlock",
    "NONLOCAL_VARIANTS",
    "nonlocal_variant",
]


class NonLocalMixin:
    """
    The non-local part of a residual block's non-local variant, placed before a ``CNNBlockBase``
    subclass: the block's own forward, then ``nonlocal_block`` on its output,
    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride).

    ``valid_sizes``: None, or per image of the batch being computed, its valid (h, w) on this
    block's output grid, passed to ``nonlocal_block``; set only for the duration of one model
    call by ``meta_arch.valid_sizes_in_blocks``.
    """

    def __init__(self, *args, nonlocal_block: nn.Module, **kwargs):
        super().__init__(*args, **kwargs)
        self.nonlocal_block = nonlocal_block
        self.valid_sizes = None

    def forward(self, x):
        y = super().forward(x)
        if self.valid_sizes is None:
            return self.nonlocal_block(y)
        return self.nonlocal_block(y, valid_sizes=self.valid_sizes)


class NonLocalBasicBlock(NonLocalMixin, BasicBlock):
    """Detectron2's ``BasicBlock`` (R18, R34), then ``nonlocal_block``."""


class NonLocalBottleneckBlock(NonLocalMixin, BottleneckBlock):
    """Detectron2's ``BottleneckBlock`` (R50 and deeper, ResNeXt), then ``nonlocal_block``."""


class NonLocalDeformBottleneckBlock(NonLocalMixin, DeformBottleneckBlock):
    """Detectron2's ``DeformBottleneckBlock`` (``DEFORM_ON_PER_STAGE``), then ``nonlocal_block``."""


# Detectron2 block class -> its non-local variant.
NONLOCAL_VARIANTS = {
    BasicBlock: NonLocalBasicBlock,
    BottleneckBlock: NonLocalBottleneckBlock,
    DeformBottleneckBlock: NonLocalDeformBottleneckBlock,
}


def nonlocal_variant(
    block: CNNBlockBase, nonlocal_block: nn.Module, block_args: Dict, *, where: str, source: str
):
    """
    The non-local variant of a built block: a new block of ``NONLOCAL_VARIANTS[type(block)]``
    built from ``block``'s in/out channels and stride plus ``block_args`` (the other arguments
    ``block`` was built with), frozen if ``block`` is, holding ``block``'s weights, and running
    ``nonlocal_block`` on its output.

    Args:
        block: a Detectron2 ``BasicBlock``, ``BottleneckBlock`` or ``DeformBottleneckBlock``.
        nonlocal_block: the module to run after it.
        block_args: e.g. ``{"norm": "FrozenBN", "bottleneck_channels": 256, "num_groups": 1,
            "stride_in_1x1": True, "dilation": 1}``.
        where: the block's name (``"res4.21"``), for errors.
        source: where ``block_args`` come from (``"MODEL.RESNETS"``), for errors.

    Raises:
        ValueError if ``block`` is of another class, or if ``block_args`` do not rebuild
        ``block`` exactly (another layer, stride, dilation, group count or norm).
    """
    variant = NONLOCAL_VARIANTS.get(type(block))
    if variant is None:
        raise ConfigError(
            f"{where} is a {type(block).__module__}.{type(block).__qualname__}; non-local blocks "
            "attach to "
            f"Detectron2's {', '.join(c.__name__ for c in NONLOCAL_VARIANTS)} only. For another "
            "block class, "
            "define its variant as `class NonLocalMyBlock(NonLocalMixin, MyBlock)` "
            "(nonlocal_det.modeling.resnet_blocks) and build the stage with it."
        )
    try:
        rebuilt = variant(
            in_channels=block.in_channels,
            out_channels=block.out_channels,
            stride=block.stride,
            nonlocal_block=nonlocal_block,
            **block_args,
        )
    except TypeError as e:  # arguments of another block class
        raise ConfigError(
            f"{where}: cannot rebuild this {type(block).__name__} from {source}: {e}"
        ) from None
    if not any(p.requires_grad for p in block.parameters()):
        rebuilt.freeze()
    for name, layer in block.named_children():
        built, expected = (" ".join(repr(m).split()) for m in (getattr(rebuilt, name, None), layer))
        if built != expected:
            raise ConfigError(
                f"{where}: rebuilt from {source}, its {name} is {built}, but the backbone built "
                f"{expected}. "
                f"Non-local blocks attach to ResNets whose blocks are built from {source}, as "
                "Detectron2's build_resnet_backbone builds them."
            )
    incompatible = rebuilt.load_state_dict(block.state_dict(), strict=False)
    assert not incompatible.unexpected_keys and all(
        k.startswith("nonlocal_block.") for k in incompatible.missing_keys
    ), incompatible
    return rebuilt
