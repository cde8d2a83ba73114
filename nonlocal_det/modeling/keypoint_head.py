"""Mask R-CNN keypoint head with non-local blocks between its convs (Wang et al., sec. 6)."""
import logging
from typing import Callable

from detectron2.config import configurable
from detectron2.modeling.roi_heads.keypoint_head import (
    ROI_KEYPOINT_HEAD_REGISTRY,
    KRCNNConvDeconvUpsampleHead,
)
from torch import nn

from .block_factory import nonlocal_block_factory

__all__ = ["KRCNNConvDeconvUpsampleNLHead"]

logger = logging.getLogger(__name__)


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class KRCNNConvDeconvUpsampleNLHead(KRCNNConvDeconvUpsampleHead):
    """
    ``KRCNNConvDeconvUpsampleHead`` with a non-local block after every ``nonlocal_every``
    of its convs (after the conv's ReLU), ``num_nonlocal`` blocks in all; the paper puts 4
    in the 8-conv head, one after every 2 convs.

    ``conv_fcn1..N`` and ``score_lowres`` keep their names and initialisation; the blocks,
    ``nonlocal_fcn{k}`` after ``conv_fcn{k}``, are added after the head's weight init, so
    they start as the identity and the head starts as the stock head.
    Input (R, C, S, S) for R RoIs (R may be 0) at any pooler resolution S.
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        num_keypoints,
        conv_dims,
        nonlocal_block: Callable[[int], nn.Module],
        num_nonlocal: int = 4,
        nonlocal_every: int = 2,
        **kwargs,
    ):
        """
        Args:
            input_shape, num_keypoints, conv_dims, kwargs: as for KRCNNConvDeconvUpsampleHead.
            nonlocal_block: ``channels -> nn.Module``.
            num_nonlocal: number of non-local blocks.
            nonlocal_every: a block after every this many convs.
        """
        super().__init__(input_shape, num_keypoints=num_keypoints, conv_dims=conv_dims, **kwargs)
        if num_nonlocal < 0 or nonlocal_every < 1:
            raise ValueError(
                "MODEL.ROI_KEYPOINT_HEAD.NUM_NONLOCAL must be >= 0 and NONLOCAL_EVERY >= 1, got "
                f"{num_nonlocal} and {nonlocal_every}"
            )
        if num_nonlocal * nonlocal_every > len(conv_dims):
            raise ValueError(
                f"MODEL.ROI_KEYPOINT_HEAD.NUM_NONLOCAL={num_nonlocal} blocks, one every "
                f"NONLOCAL_EVERY={nonlocal_every} convs, need {num_nonlocal * nonlocal_every} "
                f"convs, but the head has {len(conv_dims)} (CONV_DIMS)"
            )
        after_conv = [nonlocal_every * (i + 1) for i in range(num_nonlocal)]
        blocks = {f"conv_fcn_relu{k}": (f"nonlocal_fcn{k}", nonlocal_block(conv_dims[k - 1])) for k in after_conv}
        # The parent's forward runs the children in registration order: put each block
        # right after its conv's ReLU. Keys are names, so existing ones are unchanged.
        ordered = []
        for name, module in self._modules.items():
            ordered.append((name, module))
            if name in blocks:
                ordered.append(blocks[name])
        self._modules.clear()
        self._modules.update(ordered)
        logger.info(f"Keypoint head: non-local blocks after convs {after_conv}")

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["nonlocal_block"] = nonlocal_block_factory(cfg)
        ret["num_nonlocal"] = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_NONLOCAL
        ret["nonlocal_every"] = cfg.MODEL.ROI_KEYPOINT_HEAD.NONLOCAL_EVERY
        return ret
