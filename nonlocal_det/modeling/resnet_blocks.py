"""
Detectron2's residual blocks with blocks of the non-local family attached. A variant
(``NonLocalBasicBlock``, ``NonLocalBottleneckBlock`` (ResNeXt too),
``NonLocalDeformBottleneckBlock``) takes its parent's arguments plus up to two built modules:

- ``context_block`` (GC), on the residual branch after its last conv and norm, before the
  shortcut is added: GCNet's placement (Cao et al., sec. 4.3);
- ``nonlocal_block`` (NL, CGNL, DNL), on the block's output: Wang et al.'s placement.

The parent's parameters keep their names and the new ones sit under ``context_block.*`` and
``nonlocal_block.*`` (``res4.21.conv1.weight`` ..., ``res4.21.nonlocal_block.theta.weight`` ...),
so a stock checkpoint loads with only the new keys missing. ``CNNBlockBase.freeze`` (what
``ResNet`` calls for the stages below FREEZE_AT) freezes the attached blocks with the rest.

``attached_variant`` rebuilds a block as its variant from the block itself, whatever built it:
Detectron2's ``build_resnet_backbone``, DeepLab's dilated ResNet with multi-grid, a LazyConfig's
stages or a user's own builder.
"""

from contextvars import ContextVar
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, get_norm
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, DeformBottleneckBlock
from torch import nn

from ..errors import ConfigError

# {residual block: per image of the batch, its valid (h, w) on that block's output grid}, set by
# ``meta_arch.valid_sizes_in_blocks`` for one model call and read by ``NonLocalMixin.forward``.
# A context variable rather than an argument: Detectron2 calls ``backbone(images.tensor)`` and
# runs ResNet stages as ``nn.Sequential``, so no argument reaches a block without re-implementing
# their forwards. Rather than attributes set on every block for one call: one name, set and read
# in one place each, undone by its token, private to a thread or task.
VALID_SIZES: ContextVar[Dict[nn.Module, List[Tuple[int, int]]]] = ContextVar(
    "nonlocal_det_valid_sizes", default=None
)


class NonLocalMixin:
    """
    What a residual block's variant adds, placed before a ``CNNBlockBase`` subclass that
    defines ``residual_branch(x)``: (B, C_in, H, W) -> (B, C_out, H / stride, W / stride) as
    the block, with ``context_block`` on its residual branch and ``nonlocal_block`` after it
    (either may be None). Both get the valid sizes ``VALID_SIZES`` holds for this block, if any.
    """

    def __init__(
        self,
        *args,
        nonlocal_block: Optional[nn.Module] = None,
        context_block: Optional[nn.Module] = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if nonlocal_block is None and context_block is None:
            raise ValueError("a non-local variant needs a nonlocal_block, a context_block or both")
        self.context_block = context_block
        self.nonlocal_block = nonlocal_block

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        """The block's convolutions up to its last conv and norm, before the shortcut's sum."""
        raise NotImplementedError

    def forward(self, x):
        valid_sizes = (VALID_SIZES.get() or {}).get(self)
        sizes = {} if valid_sizes is None else {"valid_sizes": valid_sizes}
        if self.context_block is None:
            out = super().forward(x)
        else:
            branch = self.context_block(self.residual_branch(x), **sizes)
            shortcut = x if self.shortcut is None else self.shortcut(x)
            out = F.relu_(branch + shortcut)
        if self.nonlocal_block is not None:
            out = self.nonlocal_block(out, **sizes)
        return out


class NonLocalBasicBlock(NonLocalMixin, BasicBlock):
    """Detectron2's ``BasicBlock`` (R18, R34) with the attached blocks."""

    def residual_branch(self, x):
        return self.conv2(F.relu_(self.conv1(x)))


class NonLocalBottleneckBlock(NonLocalMixin, BottleneckBlock):
    """Detectron2's ``BottleneckBlock`` (R50 and deeper, ResNeXt) with the attached blocks."""

    def residual_branch(self, x):
        return self.conv3(F.relu_(self.conv2(F.relu_(self.conv1(x)))))


class NonLocalDeformBottleneckBlock(NonLocalMixin, DeformBottleneckBlock):
    """Detectron2's ``DeformBottleneckBlock`` (``DEFORM_ON_PER_STAGE``) with the attached blocks."""

    def residual_branch(self, x):
        out = F.relu_(self.conv1(x))
        offsets = self.conv2_offset(out)
        if self.deform_modulated:
            offset_x, offset_y, mask = torch.chunk(offsets, 3, dim=1)
            out = self.conv2(out, torch.cat((offset_x, offset_y), dim=1), mask.sigmoid())
        else:
            out = self.conv2(out, offsets)
        return self.conv3(F.relu_(out))


# Detectron2 block class -> its variant.
NONLOCAL_VARIANTS = {
    BasicBlock: NonLocalBasicBlock,
    BottleneckBlock: NonLocalBottleneckBlock,
    DeformBottleneckBlock: NonLocalDeformBottleneckBlock,
}

# Detectron2's norm names (``detectron2.layers.get_norm``), the frozen one first.
_NORM_NAMES = ("FrozenBN", "BN", "GN", "SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "LN")


def _norm_name(norm: Optional[nn.Module], where: str) -> str:
    """The Detectron2 norm name that builds ``norm`` (compared by class, repr and stats mode)."""
    if norm is None:
        return ""
    channels = norm.weight.shape[0]
    for name in _NORM_NAMES:
        candidate = get_norm(name, channels)
        if (
            type(candidate) is type(norm)
            and repr(candidate) == repr(norm)
            and getattr(candidate, "stats_mode", None) == getattr(norm, "stats_mode", None)
        ):
            return name
    raise ConfigError(
        f"{where}: its norm {norm!r} is none that Detectron2's get_norm builds by name "
        f"{_NORM_NAMES}, so the block cannot be rebuilt with the non-local family attached."
    )


def built_block_arguments(block: CNNBlockBase, where: str) -> Dict:
    """
    The constructor arguments but channels and stride that build ``block`` (a Detectron2 block of
    ``NONLOCAL_VARIANTS``), read from its layers: norm, bottleneck width, groups, where the stride
    sits, dilation, deformable settings.
    """
    args = {"norm": _norm_name(block.conv1.norm, where)}
    if isinstance(block, BasicBlock):
        return args
    conv1, conv2 = block.conv1, block.conv2
    args.update(
        bottleneck_channels=conv1.out_channels,
        num_groups=conv2.groups,
        stride_in_1x1=tuple(conv1.stride) != (1, 1),
        dilation=conv2.dilation[0],
    )
    if isinstance(block, DeformBottleneckBlock):
        args.update(
            deform_modulated=block.deform_modulated,
            deform_num_groups=conv2.deformable_groups,
        )
    return args


def attached_variant(
    block: CNNBlockBase,
    *,
    nonlocal_block: Optional[nn.Module] = None,
    context_block: Optional[nn.Module] = None,
    where: str,
) -> CNNBlockBase:
    """
    ``block`` rebuilt as its variant (``NONLOCAL_VARIANTS``) from its own layers
    (``built_block_arguments``), frozen if ``block`` is, holding ``block``'s weights, with the
    blocks attached. ``where`` (``"res4.21"``) names it in errors.

    Raises ConfigError when ``block``'s class has no variant, or when the variant's layers
    differ from ``block``'s (a builder that sets what Detectron2's blocks take no argument for).
    """
    variant = NONLOCAL_VARIANTS.get(type(block))
    if variant is None:
        raise ConfigError(
            f"{where} is a {type(block).__module__}.{type(block).__qualname__}; the non-local "
            f"family attaches to Detectron2's {', '.join(c.__name__ for c in NONLOCAL_VARIANTS)}."
        )
    rebuilt = variant(
        in_channels=block.in_channels,
        out_channels=block.out_channels,
        stride=block.stride,
        nonlocal_block=nonlocal_block,
        context_block=context_block,
        **built_block_arguments(block, where),
    )
    if not any(p.requires_grad for p in block.parameters()):
        rebuilt.freeze()
    for name, layer in block.named_children():
        built, expected = (" ".join(repr(m).split()) for m in (getattr(rebuilt, name, None), layer))
        if built != expected:
            raise ConfigError(
                f"{where}: rebuilt from its own layers, its {name} is {built}, but the backbone "
                f"built {expected}; this {type(block).__name__} was built with settings "
                f"Detectron2's {type(block).__name__} takes no argument for."
            )
    incompatible = rebuilt.load_state_dict(block.state_dict(), strict=False)
    assert not incompatible.unexpected_keys and all(
        k.startswith(("nonlocal_block.", "context_block.")) for k in incompatible.missing_keys
    ), incompatible
    return rebuilt.train(block.training)
