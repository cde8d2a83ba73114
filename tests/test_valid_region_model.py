"""
MODEL.NONLOCAL.VALID_REGION on whole Detectron2 models: an image batched with an image of the
other orientation (both padded) against the model whose non-local blocks are run by hand on each
image's valid crop (tests/crop_reference.py, which tools/valid_region_check.py runs for
docs/valid_region.md's table).
"""

import os
import re

import pytest
import torch

from helpers import CONFIG_DIR, load_cfg, training_input

pytestmark = pytest.mark.detectron2


@pytest.fixture(scope="module")
def images():
    import crop_reference as valid_region_check

    return valid_region_check.random_image(160, 224, seed=1), valid_region_check.random_image(
        224, 160, seed=2
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,norm",
    [
        ("mask_rcnn_R50_NL.yaml", "GN"),
        ("mask_rcnn_R50_NL.yaml", "BN"),
        ("retinanet_R50_NL.yaml", "GN"),
    ],
)
def test_key_on_computes_each_image_on_its_valid_crop(images, config, norm):
    import crop_reference as pc

    image, mate = images
    off = pc.build_model(os.path.join(CONFIG_DIR, config), norm, False, [image, mate])
    pc.open_blocks(off, image)
    on = pc.build_model(os.path.join(CONFIG_DIR, config), norm, True, [image, mate])
    on.load_state_dict(off.state_dict())
    crops = pc.CropReference(off)
    reference = pc.compare(off, image, mate, crops)
    crops.remove()
    key_on = pc.against_reference(pc.compare(on, image, mate), reference)
    key_off = pc.against_reference(pc.compare(off, image, mate), reference)

    assert key_on["vs_ref"] <= 1e-4
    assert abs(key_on["change"] - reference["change"]) <= 0.05 * reference["change"]
    assert len(reference["detections"]) > 0 and key_on["found_ref"] == 1.0
    # with the key off, the block attends to the padding: the difference is back
    assert key_off["vs_ref"] > 1e-2 and key_off["found_ref"] < 0.5
    assert key_off["change"] > 1.2 * reference["change"]


def test_key_off_and_stock_meta_architecture_attend_over_the_padding(images):
    """VALID_REGION False is Detectron2's meta-architecture: the same outputs, padding included."""
    from detectron2.modeling import build_model

    image, mate = images
    torch.manual_seed(0)
    off = build_model(load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.NONLOCAL.VALID_REGION", "False"))
    stock_cfg = load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.META_ARCHITECTURE", "GeneralizedRCNN")
    stock = build_model(stock_cfg)
    stock.load_state_dict(off.state_dict())
    inputs = [{"image": image}, {"image": mate}]
    with torch.no_grad():
        for model in (off, stock):
            for m in model.modules():
                if hasattr(m, "nonlocal_block"):
                    m.nonlocal_block.norm.weight.fill_(0.5)
        a, b = off.eval()(inputs), stock.eval()(inputs)
    for x, y in zip(a, b):
        assert torch.equal(x["instances"].pred_boxes.tensor, y["instances"].pred_boxes.tensor)


@pytest.mark.parametrize(
    "meta_architecture,advice",
    [
        (
            "GeneralizedRCNN",
            "set MODEL.META_ARCHITECTURE 'NonLocalGeneralizedRCNN' (the same model)",
        ),
        ("RetinaNet", "set MODEL.META_ARCHITECTURE 'NonLocalRetinaNet' (the same model)"),
        ("SemanticSegmentor", "'NonLocalSemanticSegmentor' (the same model)"),
        ("PanopticFPN", "'NonLocalPanopticFPN' (the same model)"),
        ("MyOwnMetaArchitecture", "'MyOwnMetaArchitecture' passes no valid sizes"),
        ("PanopticDeepLab", "'PanopticDeepLab' passes no valid sizes"),
    ],
)
def test_stock_meta_architecture_with_key_on_warns_without_dropping_a_head(
    caplog, meta_architecture, advice
):
    """The advice names our version of the same meta-architecture only, else the key to turn off."""
    from nonlocal_det.harness.advice import warn_about_the_blocks

    warn_about_the_blocks(
        load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.META_ARCHITECTURE", meta_architecture)
    )
    assert advice in caplog.text
    assert "MODEL.NONLOCAL.VALID_REGION False" in caplog.text
    named = re.findall(r"MODEL\.META_ARCHITECTURE '(\w+)'", caplog.text)
    assert named in ([], [f"NonLocal{meta_architecture}"])
    caplog.clear()
    warn_about_the_blocks(load_cfg("mask_rcnn_R50_NL.yaml"))
    assert "VALID_REGION" not in caplog.text


def test_unpadded_batches_train_bit_identically_with_the_key_on_or_off():
    """The quickstart's images are all 192x256 (multiples of 32): no batch is padded, and its
    losses and gradients are exactly those of the key-off model."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    batch = [training_input(192, 256, num_classes=4, seed=s) for s in range(2)]
    losses, grads = [], []
    for valid_region in (True, False):
        torch.manual_seed(0)
        cfg = load_cfg("quickstart.yaml", "MODEL.NONLOCAL.VALID_REGION", str(valid_region))
        cfg.MODEL.NONLOCAL.INIT = "small"  # non-identity blocks from the start
        model = build_model(cfg).train()
        torch.manual_seed(1)
        with EventStorage():
            loss = model(batch)
        total = sum(loss.values())
        total.backward()
        losses.append(loss)
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    assert all(torch.equal(losses[0][k], losses[1][k]) for k in losses[0])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
