"""Mask R-CNN keypoint head with non-local blocks between its convs (Wang et al., sec. 6)."""

from typing import Callable

from detectron2.config import configurable
from detectron2.layers import interpolate
from detectron2.modeling.roi_heads.keypoint_head import (
    ROI_KEYPOINT_HEAD_REGISTRY,
    KRCNNConvDeconvUpsampleHead,
)
from torch import nn

from ..errors import ConfigError
from .block_factory import nonlocal_block_factory


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class KRCNNConvDeconvUpsampleNLHead(KRCNNConvDeconvUpsampleHead):
    """
    Detectron2's ``KRCNNConvDeconvUpsampleHead`` with a non-local block ``nonlocal_fcn<k>`` after
    the ReLU of conv k, for every ``nonlocal_every``-th conv, ``num_nonlocal`` blocks in all; the
    paper puts 4 in the 8-conv head, one after every 2 convs. ``nonlocal_block``: ``channels ->
    nn.Module``; the other arguments are ``KRCNNConvDeconvUpsampleHead``'s.

    The stock head builds and initialises its layers first, so with the same seed they equal the
    stock head's; the blocks start as the identity, so the head starts as the stock head.
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
        super().__init__(input_shape, num_keypoints=num_keypoints, conv_dims=conv_dims, **kwargs)
        if num_nonlocal < 0 or nonlocal_every < 1 or num_nonlocal * nonlocal_every > len(conv_dims):
            raise ConfigError(
                f"MODEL.ROI_KEYPOINT_HEAD.NUM_NONLOCAL={num_nonlocal} blocks, one every "
                f"NONLOCAL_EVERY={nonlocal_every} convs, need {num_nonlocal * nonlocal_every} "
                f"convs (NUM_NONLOCAL >= 0, NONLOCAL_EVERY >= 1), but the head has "
                f"{len(conv_dims)} (CONV_DIMS)"
            )
        for k in range(nonlocal_every, nonlocal_every * num_nonlocal + 1, nonlocal_every):
            self.add_module(f"nonlocal_fcn{k}", nonlocal_block(conv_dims[k - 1]))

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_KEYPOINT_HEAD
        return {
            **super().from_config(cfg, input_shape),
            "nonlocal_block": nonlocal_block_factory(cfg),
            "num_nonlocal": head.NUM_NONLOCAL,
            "nonlocal_every": head.NONLOCAL_EVERY,
        }

    def layers(self, x):
        """(R, C, S, S) RoI features (R may be 0, any S) -> (R, num_keypoints, 4S, 4S) heatmaps."""
        for name, layer in self.named_children():
            if name.startswith("nonlocal_fcn"):
                continue  # run after their conv's ReLU, below
            x = layer(x)
            if name.startswith("conv_fcn_relu") and hasattr(self, f"nonlocal_fcn{name[13:]}"):
                x = getattr(self, f"nonlocal_fcn{name[13:]}")(x)
        return interpolate(x, scale_factor=self.up_scale, mode="bilinear", align_corners=False)
