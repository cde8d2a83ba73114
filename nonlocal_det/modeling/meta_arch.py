"""
Detectron2's GeneralizedRCNN and RetinaNet with each image's valid size passed to the backbone's
non-local blocks, so that an image's features and detections do not depend on the padding of
its batch (MODEL.NONLOCAL.MASK_PADDING; docs/padding.md).

Why a meta-architecture, and why this one method pair. The valid sizes are what
``ImageList.from_tensors`` records as ``image_sizes`` in ``preprocess_image``: the shapes of the
inputs' ``"image"`` tensors, which preprocessing normalises but does not resize. Detectron2 then
calls ``self.backbone(images.tensor)``: the backbone, and the ResNet inside it, receive the padded
tensor alone, and a ResNet runs its stages as ``nn.Sequential``\\ s. No argument can reach a block
without re-implementing ``GeneralizedRCNN.forward``/``inference`` (or ``RetinaNet``'s) or
``ResNet.forward``. So the two entry points Detectron2 calls with the inputs, ``forward`` and
``inference``, are overridden to open ``valid_sizes_in_blocks`` around Detectron2's own code,
which then runs unchanged. The sizes live on the non-local residual blocks only for that call
(a ``with``; no global or thread-local state), so one model serves one forward at a time, as a
module with BatchNorm statistics does. With ``mask_padding=False`` the classes are Detectron2's.
"""

import math
from contextlib import contextmanager, nullcontext
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet
from torch import nn

from .backbone import find_resnet
from .resnet_blocks import NonLocalMixin

__all__ = ["NonLocalGeneralizedRCNN", "NonLocalRetinaNet", "valid_sizes_in_blocks"]


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


@contextmanager
def valid_sizes_in_blocks(backbone: nn.Module, image_sizes: Sequence[Tuple[int, int]]):
    """
    For the duration of the ``with``, every non-local residual block of ``backbone``'s ResNet
    runs its non-local block with each image's valid size on that block's grid: ceil(h / s),
    ceil(w / s) for an image of h x w pixels and the block's total stride s (ResNet's
    convolutions are centred, so a cell is valid when its centre lies on a valid pixel).

    Nothing is passed while a model is traced, scripted or compiled: an exported model attends
    over the padded map (docs/export.md).
    """
    resnet = find_resnet(backbone)
    if resnet is None or _exporting():
        yield
        return
    assigned = []
    stride = resnet.stem.stride
    for stage in resnet.stages:
        for block in stage:
            stride *= block.stride
            if isinstance(block, NonLocalMixin):
                assigned.append((block, block.valid_sizes))
                block.valid_sizes = [
                    (math.ceil(h / stride), math.ceil(w / stride)) for h, w in image_sizes
                ]
    try:
        yield
    finally:
        for block, previous in assigned:
            block.valid_sizes = previous


def _image_sizes(batched_inputs: List[Dict]) -> List[Tuple[int, int]]:
    """
    ``ImageList.image_sizes`` of the batch ``preprocess_image`` will build: the images' shapes.
    """
    return [tuple(x["image"].shape[-2:]) for x in batched_inputs]


class MaskPaddingMixin:
    """
    The padding part of ``NonLocalGeneralizedRCNN`` and ``NonLocalRetinaNet``, placed before
    Detectron2's meta-architecture: the ``mask_padding`` argument (MODEL.NONLOCAL.MASK_PADDING),
    and ``forward`` run inside ``valid_sizes_in_blocks``.
    """

    @configurable
    def __init__(self, *, mask_padding: bool = True, **kwargs):
        """
        Args:
            mask_padding: pass each image's valid size to the non-local blocks; False: exactly
                Detectron2's meta-architecture (blocks attend over the padded map, as the paper).
            kwargs: the Detectron2 meta-architecture's arguments.
        """
        super().__init__(**kwargs)
        self.mask_padding = mask_padding

    @classmethod
    def from_config(cls, cfg):
        return {**super().from_config(cfg), "mask_padding": cfg.MODEL.NONLOCAL.MASK_PADDING}

    def _valid_sizes_of(self, batched_inputs):
        if not self.mask_padding:
            return nullcontext()
        return valid_sizes_in_blocks(self.backbone, _image_sizes(batched_inputs))

    def forward(self, batched_inputs):
        with self._valid_sizes_of(batched_inputs):
            return super().forward(batched_inputs)


@META_ARCH_REGISTRY.register()
class NonLocalGeneralizedRCNN(MaskPaddingMixin, GeneralizedRCNN):
    """
    Detectron2's ``GeneralizedRCNN`` whose backbone's non-local blocks compute each image on its
    valid region (``mask_padding``, MODEL.NONLOCAL.MASK_PADDING).
    """

    def inference(self, batched_inputs, detected_instances=None, do_postprocess: bool = True):
        with self._valid_sizes_of(batched_inputs):
            return super().inference(batched_inputs, detected_instances, do_postprocess)


@META_ARCH_REGISTRY.register()
class NonLocalRetinaNet(MaskPaddingMixin, RetinaNet):
    """Detectron2's ``RetinaNet`` with ``mask_padding`` as in ``NonLocalGeneralizedRCNN``."""
