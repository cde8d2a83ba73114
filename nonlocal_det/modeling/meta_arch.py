"""
Detectron2's meta-architectures with each image's valid size passed to the backbone's blocks of
the non-local family, so that an image's features do not depend on the padding of its batch
(MODEL.NONLOCAL.VALID_REGION; docs/valid_region.md).

Why a meta-architecture, and why these methods. The valid sizes are what ``ImageList.from_tensors``
records as ``image_sizes`` when the model preprocesses its inputs: the shapes of the inputs'
``"image"`` tensors, which preprocessing normalises but does not resize. Detectron2 then calls
``self.backbone(images.tensor)``: the backbone, and the ResNet inside it, receive the padded tensor
alone, and a ResNet runs its stages as ``nn.Sequential``\\ s, so no argument can reach a block
without re-implementing the meta-architecture's ``forward`` or ``ResNet.forward``. So the entry
points Detectron2 calls with the inputs (``forward``, and ``inference`` where the meta-architecture
has one) open ``valid_sizes_in_blocks`` around Detectron2's own code, which then runs unchanged; the
sizes reach the blocks through one context variable (``resnet_blocks.VALID_SIZES``), set for that
call only. With ``valid_region=False`` the classes are Detectron2's.

Covered: every meta-architecture whose backbone is called as ``backbone(images.tensor)`` on the
batch its inputs' images make: GeneralizedRCNN, RetinaNet, SemanticSegmentor, PanopticFPN.
"""

import logging
import math
from contextlib import contextmanager, nullcontext
from typing import Sequence, Tuple

from detectron2.config import configurable
from detectron2.modeling import (
    META_ARCH_REGISTRY,
    GeneralizedRCNN,
    PanopticFPN,
    RetinaNet,
    SemanticSegmentor,
)
from detectron2.utils.logger import log_first_n
from torch import nn

from ..errors import ConfigError
from ..layers.valid_region import exporting
from .backbone import block_strides, find_resnet
from .resnet_blocks import VALID_SIZES, NonLocalMixin


@contextmanager
def valid_sizes_in_blocks(backbone: nn.Module, image_sizes: Sequence[Tuple[int, int]]):
    """
    For the duration of the ``with``, every residual block of ``backbone``'s ResNet with a block
    of the non-local family attached runs it with each image's valid size on that block's grid
    (``resnet_blocks.VALID_SIZES``): ceil(h / s), ceil(w / s) for an image of h x w pixels and
    the block's total stride s (``block_strides``; ResNet's convolutions are centred, so a cell
    is valid when its centre lies on a valid pixel).

    Nothing is passed while a model is traced, scripted or exported (``exporting``): the valid
    sizes are data, which an exported graph cannot branch on, so an exported model attends over
    the padded map (docs/export.md); a warning says so once.
    """
    resnet = find_resnet(backbone)
    if resnet is None:
        yield
        return
    if exporting():
        log_first_n(
            logging.WARNING,
            "Exporting: the valid sizes of a padded batch are not passed to the non-local "
            "blocks of an exported model; it attends over the padded map (docs/export.md).",
            key="message",
        )
        yield
        return
    sizes = {
        block: [(math.ceil(h / stride), math.ceil(w / stride)) for h, w in image_sizes]
        for block, stride in block_strides(resnet).items()
        if isinstance(block, NonLocalMixin)
    }
    token = VALID_SIZES.set(sizes)
    try:
        yield
    finally:
        VALID_SIZES.reset(token)


class ValidRegionMixin:
    """
    Placed before a Detectron2 meta-architecture, whose arguments it takes: runs its ``forward``
    inside ``valid_sizes_in_blocks`` unless ``valid_region`` (MODEL.NONLOCAL.VALID_REGION) is
    False, which gives exactly Detectron2's meta-architecture (the blocks attend over the padded
    map, as in the paper).
    """

    @configurable
    def __init__(self, *, valid_region: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.valid_region = valid_region
        if find_resnet(self.backbone) is None:
            stock = VALID_REGION_META_ARCHITECTURES.get(type(self).__name__, "the stock class")
            raise ConfigError(
                f"{type(self).__name__} runs blocks of the non-local family inside a Detectron2 "
                f"ResNet, and its backbone is a {type(self.backbone).__module__}."
                f"{type(self.backbone).__qualname__}, which has none: use {stock} for it"
            )

    @classmethod
    def from_config(cls, cfg):
        return {**super().from_config(cfg), "valid_region": cfg.MODEL.NONLOCAL.VALID_REGION}

    def _valid_sizes_of(self, batched_inputs):
        if not self.valid_region:
            return nullcontext()
        # ``ImageList.image_sizes`` of the batch the model's preprocessing builds: the shapes.
        image_sizes = [tuple(x["image"].shape[-2:]) for x in batched_inputs]
        return valid_sizes_in_blocks(self.backbone, image_sizes)

    def forward(self, batched_inputs):
        with self._valid_sizes_of(batched_inputs):
            return super().forward(batched_inputs)


class _ValidRegionInference(ValidRegionMixin):
    """For R-CNNs, whose ``inference`` is public and called on its own."""

    def inference(self, batched_inputs, *args, **kwargs):
        with self._valid_sizes_of(batched_inputs):
            return super().inference(batched_inputs, *args, **kwargs)


# nonlocal_det's meta-architectures -> the Detectron2 one each extends, with the same heads.
VALID_REGION_META_ARCHITECTURES = {
    "NonLocalGeneralizedRCNN": "GeneralizedRCNN",
    "NonLocalRetinaNet": "RetinaNet",
    "NonLocalSemanticSegmentor": "SemanticSegmentor",
    "NonLocalPanopticFPN": "PanopticFPN",
}


@META_ARCH_REGISTRY.register()
class NonLocalGeneralizedRCNN(_ValidRegionInference, GeneralizedRCNN):
    """Detectron2's ``GeneralizedRCNN`` computing the blocks on each image's valid region."""


@META_ARCH_REGISTRY.register()
class NonLocalRetinaNet(ValidRegionMixin, RetinaNet):
    """Detectron2's ``RetinaNet`` computing the blocks on each image's valid region."""


@META_ARCH_REGISTRY.register()
class NonLocalSemanticSegmentor(ValidRegionMixin, SemanticSegmentor):
    """Detectron2's ``SemanticSegmentor`` computing the blocks on each image's valid region."""


@META_ARCH_REGISTRY.register()
class NonLocalPanopticFPN(_ValidRegionInference, PanopticFPN):
    """Detectron2's ``PanopticFPN`` computing the blocks on each image's valid region."""
