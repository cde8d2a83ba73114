"""The LazyConfig mask_rcnn_R101_NL.py builds the same model as mask_rcnn_R101_NL.yaml."""
import os

import pytest

from conftest import HAS_DETECTRON2

pytestmark = pytest.mark.detectron2

if HAS_DETECTRON2:
    from detectron2.config import LazyConfig, instantiate
    from detectron2.modeling import build_model

    from d2_helpers import CONFIG_DIR, load_cfg


def test_lazy_config_matches_yaml():
    lazy = LazyConfig.load(os.path.join(CONFIG_DIR, "mask_rcnn_R101_NL.py"))
    lazy_model = instantiate(lazy.model)
    yaml_model = build_model(load_cfg("mask_rcnn_R101_NL.yaml"))
    lazy_state, yaml_state = lazy_model.state_dict(), yaml_model.state_dict()
    assert {k: tuple(v.shape) for k, v in lazy_state.items()} == {k: tuple(v.shape) for k, v in yaml_state.items()}
    a = lazy_model.backbone.bottom_up.res4[21].nonlocal_block
    b = yaml_model.backbone.bottom_up.res4[21].nonlocal_block
    assert a.extra_repr() == b.extra_repr() and type(a.norm) is type(b.norm)
    assert lazy.train.init_checkpoint == "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
    assert lazy.train.max_iter == 270000
