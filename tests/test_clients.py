"""
Other Detectron2 projects' models take the blocks by config keys: a DeepLab-style dilated ResNet
(output stride 8 and 16, multi-grid), a semantic segmentor and a panoptic FPN. Each is built the
way that project builds it, from Detectron2's public builders; its outputs equal the stock
model's at initialisation and one training step is finite.
"""

import math

import pytest
import torch

from helpers import HAS_DETECTRON2, training_input

pytestmark = pytest.mark.detectron2

if HAS_DETECTRON2:
    from detectron2 import model_zoo
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
    from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet
    from detectron2.utils.events import EventStorage

    from nonlocal_det.harness.config import get_nonlocal_cfg
    from nonlocal_det.layers import NonLocalBlock2d

    @BACKBONE_REGISTRY.register()
    def build_dilated_resnet_test_backbone(cfg, input_shape):
        """
        A ResNet-50 as DeepLab builds it: res4 dilated by RES4_DILATION and res5 by
        RES5_DILATION times RES5_MULTI_GRID[k] in its k-th block, each dilated stage at stride 1.
        """
        r = cfg.MODEL.RESNETS
        stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=r.NORM)
        stages, in_channels, out_channels, bottleneck = [], 64, 256, 64
        for stage, num_blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
            dilation = {4: r.RES4_DILATION, 5: r.RES5_DILATION}.get(stage, 1)
            grid = list(r.RES5_MULTI_GRID) if stage == 5 else [1] * num_blocks
            first_stride = 1 if stage == 2 or dilation > 1 else 2
            stages.append(
                ResNet.make_stage(
                    BottleneckBlock,
                    num_blocks,
                    in_channels=in_channels,
                    out_channels=out_channels,
                    bottleneck_channels=bottleneck,
                    stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                    dilation_per_block=[dilation * m for m in grid],
                    norm=r.NORM,
                    stride_in_1x1=r.STRIDE_IN_1X1,
                )
            )
            in_channels, out_channels, bottleneck = out_channels, 2 * out_channels, 2 * bottleneck
        return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=0)


def _dilated_cfg(res4_dilation, res5_dilation, multi_grid, *opts):
    cfg = get_nonlocal_cfg(
        model_zoo.get_config_file("Misc/semantic_R_50_FPN_1x.yaml"),
        ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN"],
    )
    # the keys DeepLab's config adds
    cfg.MODEL.RESNETS.RES4_DILATION = res4_dilation
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = list(multi_grid)
    cfg.MODEL.RESNETS.RES5_DILATION = res5_dilation
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res5"]
    cfg.MODEL.NONLOCAL.BACKBONE_NAME = "build_dilated_resnet_test_backbone"
    cfg.MODEL.NONLOCAL.VALID_REGION = False
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", "build_nonlocal_backbone", *opts])
    return cfg


DEEPLAB_SETTINGS = {
    "OS8": (2, 4, (1, 2, 4)),
    "OS16": (1, 2, (1, 2, 4)),
}


@pytest.mark.slow
@pytest.mark.parametrize("block", ["NL", "DNL"])
@pytest.mark.parametrize("setting", list(DEEPLAB_SETTINGS))
def test_dilated_resnet_takes_blocks_in_res4_and_res5(setting, block):
    cfg = _dilated_cfg(
        *DEEPLAB_SETTINGS[setting],
        "MODEL.NONLOCAL.BLOCK",
        block,
        "MODEL.NONLOCAL.RES4",
        "[-2]",
        "MODEL.NONLOCAL.RES5",
        "[0, -1]",
    )
    shape = ShapeSpec(channels=3)
    torch.manual_seed(0)
    stock = BACKBONE_REGISTRY.get(cfg.MODEL.NONLOCAL.BACKBONE_NAME)(cfg, shape).eval()
    torch.manual_seed(0)
    ours = build_backbone(cfg, shape).eval()
    for stage in ("res4", "res5"):
        dilations = [b.conv2.dilation[0] for b in getattr(ours, stage)]
        assert dilations == [b.conv2.dilation[0] for b in getattr(stock, stage)]
    assert [ours.res5[k].conv2.dilation[0] for k in range(3)] == [
        DEEPLAB_SETTINGS[setting][1] * m for m in DEEPLAB_SETTINGS[setting][2]
    ]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, got = stock(x), ours(x)
    assert expected["res5"].shape[-1] == 96 // (8 if setting == "OS8" else 16)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    # one training step of the segmentor around it, with blocks that are not identities
    cfg.MODEL.NONLOCAL.INIT = "small"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res5"]
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert sum(isinstance(m, NonLocalBlock2d) for m in model.modules()) == 3
    batch = [dict(training_input(64, 96), sem_seg=torch.randint(0, 54, (64, 96))) for _ in "ab"]
    losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_block_class_without_variant_names_the_stages_that_work():
    """A stage of a project's own block class (TridentNet's) is refused; the others work."""
    from detectron2.layers import CNNBlockBase

    from nonlocal_det.modeling import insert_nonlocal_blocks

    class ProjectBlock(CNNBlockBase):
        def forward(self, x):
            return x

    stock = BottleneckBlock(64, 64, bottleneck_channels=16)
    stages = {"res3": [stock, stock], "res4": [ProjectBlock(64, 64, 1)] * 2}
    block = lambda c: NonLocalBlock2d(c, norm="")  # noqa: E731
    with pytest.raises(ValueError, match=r"MODEL.NONLOCAL.RES4 place blocks in res4, whose block "):
        insert_nonlocal_blocks(
            stages, {"res4": [0]}, block, key_of=lambda s: f"MODEL.NONLOCAL.{s.upper()}"
        )
    with pytest.raises(ValueError, match=r"Stages of this ResNet that take them: \['res3'\]"):
        insert_nonlocal_blocks(stages, {"res4": [0]}, block)
    assert insert_nonlocal_blocks(stages, {"res3": [0]}, block) == ["res3.0"]


def _segmentation_cfg(config, meta_architecture, *opts):
    return get_nonlocal_cfg(
        model_zoo.get_config_file(config),
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            "",
            "MODEL.META_ARCHITECTURE",
            meta_architecture,
            "MODEL.BACKBONE.NAME",
            "build_nonlocal_backbone",
            "MODEL.NONLOCAL.NORM",
            "GN",
            *opts,
        ],
    )


SEGMENTATION = {
    "semantic": ("Misc/semantic_R_50_FPN_1x.yaml", "SemanticSegmentor"),
    "panoptic": ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", "PanopticFPN"),
}


def _segmentation_batch(sizes):
    return [
        dict(training_input(h, w, seed=i), sem_seg=torch.randint(0, 54, (h, w)))
        for i, (h, w) in enumerate(sizes)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("family", list(SEGMENTATION))
def test_segmentation_models_equal_stock_at_init_and_train(family):
    config, stock_name = SEGMENTATION[family]
    torch.manual_seed(0)
    stock = build_model(_segmentation_cfg(config, stock_name, "MODEL.NONLOCAL.RES4", "[]"))
    torch.manual_seed(0)
    ours = build_model(_segmentation_cfg(config, f"NonLocal{stock_name}"))
    missing = ours.load_state_dict(stock.state_dict(), strict=False).missing_keys
    assert missing and all(".nonlocal_block." in k for k in missing)
    batch = _segmentation_batch([(64, 96), (48, 80)])  # the second image padded
    with torch.no_grad():
        expected, got = stock.eval()(batch), ours.eval()(batch)
    for a, b in zip(expected, got):
        assert torch.equal(a["sem_seg"], b["sem_seg"])
    for module in ours.modules():
        if isinstance(module, NonLocalBlock2d):
            module.norm.weight.data.fill_(0.5)
    with EventStorage():
        losses = ours.train()(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


@pytest.mark.parametrize("family", list(SEGMENTATION))
def test_segmentation_models_compute_each_image_on_its_valid_region(family):
    """The res4 block sees each image's valid size: ceil(h / 16), ceil(w / 16)."""
    config, stock_name = SEGMENTATION[family]
    model = build_model(_segmentation_cfg(config, f"NonLocal{stock_name}")).eval()
    block = next(m for m in model.modules() if isinstance(m, NonLocalBlock2d))
    seen = []
    block.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("valid_sizes")), with_kwargs=True
    )
    sizes = [(64, 96), (40, 70)]
    with torch.no_grad():
        model(_segmentation_batch(sizes))
    assert seen == [[(math.ceil(h / 16), math.ceil(w / 16)) for h, w in sizes]]
