"""
Building a whole model with the errors a user can act on: a head reading a feature the non-local
backbone lacks becomes a ConfigError naming the key to set (``head_feature_mismatch``), for the
trainer and for the tools that load a trained model.
"""

import contextlib

from ..checkpoint import load_trained_weights
from .backbone import head_feature_mismatch

__all__ = ["naming_head_feature_mismatch", "build_trained_model"]


@contextlib.contextmanager
def naming_head_feature_mismatch(cfg):
    """Around ``build_model(cfg)``: Detectron2's KeyError for a missing feature -> ConfigError."""
    try:
        yield
    except KeyError:
        error = head_feature_mismatch(cfg)
        if error is None:
            raise
        raise error from None


def build_trained_model(cfg, random_ok: bool):
    """``build_model(cfg)`` in eval mode with MODEL.WEIGHTS loaded (``load_trained_weights``)."""
    from detectron2.modeling import build_model

    with naming_head_feature_mismatch(cfg):
        model = build_model(cfg).eval()
    load_trained_weights(model, cfg.MODEL.WEIGHTS, random_ok=random_ok)
    return model
