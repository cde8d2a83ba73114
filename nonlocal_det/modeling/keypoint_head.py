"""Mask R-CNN keypoint head with non-local blocks between its convs (Wang et al., sec. 6)."""

import logging
from typing import Callable

from detectron2.config import configurable
from detectron2.layers import Conv2d, ConvTranspose2d, interpolate
from detectron2.modeling.roi_heads.keypoint_head import (
    ROI_KEYPOINT_HEAD_REGISTRY,
    BaseKeypointRCNNHead,
)
from torch import nn

from ..errors import ConfigError
from .block_factory import nonlocal_block_factory

__all__ = ["KRCNNConvDeconvUpsampleNLHead"]

logger = logging.getLogger(__name__)


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class KRCNNConvDeconvUpsampleNLHead(BaseKeypointRCNNHead, nn.Sequential):
    """
    Detectron2's ``KRCNNConvDeconvUpsampleHead`` (3x3 convs with ReLU, a 4x4 stride-2 transposed
    conv ``score_lowres``, then 2x bilinear upsampling) with a non-local block after every
    ``nonlocal_every`` of its convs (after the conv's ReLU), ``num_nonlocal`` blocks in all; the
    paper puts 4 in the 8-conv head, one after every 2 convs.

    Like the stock head it is an ``nn.Sequential`` whose children run in registration order:
    ``conv_fcn1, conv_fcn_relu1, conv_fcn2, conv_fcn_relu2, nonlocal_fcn2, ..., score_lowres``.
    The stock layers have the stock names and initialisation, drawn from the random generator
    in the stock order before the blocks are built: with the same seed they equal the stock
    head's, and the blocks start as the identity, so the head starts as the stock head.
    Input (R, C, S, S) for R RoIs (R may be 0) at any pooler resolution S; output
    (R, num_keypoints, 4S, 4S) heatmaps.
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
        super().__init__(num_keypoints=num_keypoints, **kwargs)
        if num_nonlocal < 0 or nonlocal_every < 1:
            raise ConfigError(
                "MODEL.ROI_KEYPOINT_HEAD.NUM_NONLOCAL must be >= 0 and NONLOCAL_EVERY >= 1, got "
                f"{num_nonlocal} and {nonlocal_every}"
            )
        if num_nonlocal * nonlocal_every > len(conv_dims):
            raise ConfigError(
                f"MODEL.ROI_KEYPOINT_HEAD.NUM_NONLOCAL={num_nonlocal} blocks, one every "
                f"NONLOCAL_EVERY={nonlocal_every} convs, need {num_nonlocal * nonlocal_every} "
                f"convs, but the head has {len(conv_dims)} (CONV_DIMS)"
            )
        self.up_scale = 2.0
        channels = [input_shape.channels, *conv_dims]
        convs = [
            Conv2d(c_in, c_out, 3, stride=1, padding=1)
            for c_in, c_out in zip(channels, channels[1:])
        ]
        deconv_kernel = 4
        score_lowres = ConvTranspose2d(
            channels[-1], num_keypoints, deconv_kernel, stride=2, padding=deconv_kernel // 2 - 1
        )
        for layer in (*convs, score_lowres):  # the stock head's MSRA fill (Caffe2's)
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(layer.bias, 0)
        after_conv = {nonlocal_every * (i + 1) for i in range(num_nonlocal)}
        blocks = {k: nonlocal_block(conv_dims[k - 1]) for k in sorted(after_conv)}

        for k, conv in enumerate(convs, 1):
            self.add_module(f"conv_fcn{k}", conv)
            self.add_module(f"conv_fcn_relu{k}", nn.ReLU())
            if k in blocks:
                self.add_module(f"nonlocal_fcn{k}", blocks[k])
        self.score_lowres = score_lowres
        logger.info(f"Keypoint head: non-local blocks after convs {sorted(after_conv)}")

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["input_shape"] = input_shape
        ret["conv_dims"] = cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS
        ret["nonlocal_block"] = nonlocal_block_factory(cfg)
        ret["num_nonlocal"] = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_NONLOCAL
        ret["nonlocal_every"] = cfg.MODEL.ROI_KEYPOINT_HEAD.NONLOCAL_EVERY
        return ret

    def layers(self, x):
        """(R, C, S, S) RoI features -> (R, num_keypoints, 4S, 4S) heatmaps."""
        for layer in self:
            x = layer(x)
        return interpolate(x, scale_factor=self.up_scale, mode="bilinear", align_corners=False)
