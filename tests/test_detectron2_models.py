"""
Non-local backbones and keypoint head inside real Detectron2 models (skipped without Detectron2).
"""

import copy
import logging
import pickle
import re

import pytest
import torch

from helpers import (
    HAS_DETECTRON2,
    SHIPPED_CONFIGS,
    load_cfg,
    load_checkpoint,
    nonlocal_keys,
    randomize_nonlocal_norms,
    training_input,
)

pytestmark = pytest.mark.detectron2

if HAS_DETECTRON2:
    from detectron2 import model_zoo
    from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
    from detectron2.modeling.backbone.resnet import BottleneckBlock
    from detectron2.modeling.roi_heads import build_keypoint_head
    from detectron2.structures import Instances
    from detectron2.utils.events import EventStorage
    from detectron2.utils.testing import assert_instances_allclose

    from nonlocal_det.harness.config import get_nonlocal_cfg
    from nonlocal_det.layers import CGNLBlock2d, NonLocalBlock2d
    from nonlocal_det.modeling import NonLocalMixin, insert_nonlocal_blocks
    from nonlocal_det.modeling.resnet_blocks import attached_variant

    @BACKBONE_REGISTRY.register()
    def build_test_backbone_without_resnet(cfg, input_shape):
        """A registered backbone with no Detectron2 ResNet in it."""
        return torch.nn.Identity()


def uses_nonlocal_backbone(cfg):
    return cfg.MODEL.BACKBONE.NAME in (
        "build_nonlocal_backbone",
        "build_resnet_nl_backbone",
        "build_resnet_nl_fpn_backbone",
    )


def test_all_table_rows_shipped():
    expected = {
        "mask_rcnn_R50_baseline.yaml",
        "mask_rcnn_R50_NL.yaml",
        "mask_rcnn_R101_baseline.yaml",
        "mask_rcnn_R101_NL.yaml",
        "mask_rcnn_X152_baseline.yaml",
        "mask_rcnn_X152_NL.yaml",
        "keypoint_rcnn_R101_baseline.yaml",
        "keypoint_rcnn_R101_NL_head.yaml",
        "keypoint_rcnn_R101_NL_head_backbone.yaml",
        "mask_rcnn_R50_CGNL.yaml",
    }
    assert expected <= set(SHIPPED_CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("config", SHIPPED_CONFIGS)
def test_shipped_config_trains_and_infers_on_cpu(config):
    cfg = load_cfg(
        config, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200"
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    expects_nl = uses_nonlocal_backbone(cfg) or cfg.MODEL.ROI_KEYPOINT_HEAD.NAME.endswith("NLHead")
    assert expects_nl == ("NL" in config or "GC" in config or config.startswith("quickstart"))
    assert bool(nonlocal_keys(model)) == expects_nl
    randomize_nonlocal_norms(model)
    model.train()
    with EventStorage():
        losses = model([training_input(num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES)])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    nl_params = {
        n: p
        for n, p in model.named_parameters()
        if ".nonlocal_block." in n or ".nonlocal_fcn" in n or ".context_block." in n
    }
    assert all(p.grad is not None for p in nl_params.values())
    # With random weights and identity FrozenBN statistics, activations reach ~1e5 deep in
    # the network and softmax saturates, so theta/phi gradients can be exactly 0 here
    # (tests/test_nonlocal_block.py checks them at sane scales); W_z and the norm always learn.
    for name, p in nl_params.items():
        if name.endswith(("norm.weight", "out.weight", "_conv.3.weight")):
            assert p.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": training_input()["image"]}])
    assert isinstance(out["instances"], Instances)


def test_paper_placements():
    cases = {
        ("[-2]", "[]"): {"res4": [4]},
        ("[1, 3, 5]", "[1, 3]"): {"res3": [1, 3], "res4": [1, 3, 5]},
        ("[0, 1, 2, 3, 4, 5]", "[0, 1, 2, 3]"): {"res3": [0, 1, 2, 3], "res4": [0, 1, 2, 3, 4, 5]},
    }
    for (res4, res3), expected in cases.items():
        cfg = load_cfg(
            "mask_rcnn_R50_NL.yaml", "MODEL.NONLOCAL.RES4", res4, "MODEL.NONLOCAL.RES3", res3
        )
        resnet = build_backbone(cfg).bottom_up
        found = {
            stage: [
                i
                for i, block in enumerate(getattr(resnet, stage))
                if isinstance(block, NonLocalMixin)
            ]
            for stage in ("res2", "res3", "res4", "res5")
        }
        assert {k: v for k, v in found.items() if v} == expected


def test_r101_block_before_last_of_res4_keeps_stock_keys():
    stock = build_model(load_cfg("mask_rcnn_R101_baseline.yaml"))
    nl = build_model(load_cfg("mask_rcnn_R101_NL.yaml"))
    stock_keys, nl_keys = set(stock.state_dict()), set(nl.state_dict())
    assert "backbone.bottom_up.res4.22.conv1.weight" in nl_keys
    assert stock_keys <= nl_keys
    assert nl_keys - stock_keys == nonlocal_keys(nl)
    assert all(
        k.startswith("backbone.bottom_up.res4.21.nonlocal_block.") for k in nl_keys - stock_keys
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "depth,opts",
    [
        (18, ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]),
        (34, ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]),
        (50, []),
        (50, ["MODEL.RESNETS.NUM_GROUPS", "32", "MODEL.RESNETS.WIDTH_PER_GROUP", "4"]),  # ResNeXt
        (50, ["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, False, True, False]"]),
        (152, []),
    ],
)
@pytest.mark.parametrize(
    "backbone",
    [
        ["MODEL.NONLOCAL.BACKBONE_NAME", "build_resnet_backbone"],
        ["MODEL.NONLOCAL.BACKBONE_NAME", "build_resnet_fpn_backbone"],
        ["MODEL.BACKBONE.NAME", "build_resnet_nl_backbone"],  # names of older configs
        ["MODEL.BACKBONE.NAME", "build_resnet_nl_fpn_backbone"],
    ],
    ids=lambda opts: opts[1],
)
def test_backbone_depths_and_block_types(depth, opts, backbone):
    cfg = load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.RESNETS.DEPTH", str(depth), *backbone, *opts)
    if backbone[1] in ("build_resnet_backbone", "build_resnet_nl_backbone"):
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    model = build_backbone(cfg)
    resnet = getattr(model, "bottom_up", model)
    block = resnet.res4[-2]
    stock_class = (
        BACKBONE_REGISTRY.get("build_resnet_backbone")(cfg, ShapeSpec(channels=3))
        .res4[-2]
        .__class__
    )
    # the stock block's class, then the non-local block: a real, importable subclass
    assert type(block).__name__ == f"NonLocal{stock_class.__name__}" and isinstance(
        block, stock_class
    )
    module = __import__(type(block).__module__, fromlist=[type(block).__name__])
    assert getattr(module, type(block).__name__) is type(block)
    assert isinstance(block, NonLocalMixin) and isinstance(block.nonlocal_block, NonLocalBlock2d)
    assert block.nonlocal_block.in_channels == block.out_channels
    x = torch.randn(1, 3, 64, 96)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert set(out) == set(model.output_shape())


def test_freeze_at_leaves_nonlocal_trainable_unless_its_stage_is_frozen(caplog):
    from nonlocal_det.harness.advice import warn_about_the_blocks

    cfg = load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.BACKBONE.FREEZE_AT", "2")
    with caplog.at_level(logging.INFO, logger="nonlocal_det"):
        resnet = build_backbone(cfg).bottom_up
        warn_about_the_blocks(cfg)
    nl = resnet.res4[4].nonlocal_block
    assert all(p.requires_grad for p in nl.parameters())
    assert not any(p.requires_grad for p in resnet.res2.parameters())
    assert "Blocks of the non-local family in res4.4" in caplog.text
    assert "freezes" not in caplog.text

    caplog.clear()
    cfg = load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.BACKBONE.FREEZE_AT", "4")
    with caplog.at_level(logging.INFO, logger="nonlocal_det"):
        resnet = build_backbone(cfg).bottom_up
        warn_about_the_blocks(cfg)
    nl = resnet.res4[4].nonlocal_block
    assert not any(p.requires_grad for p in nl.parameters())
    assert "MODEL.BACKBONE.FREEZE_AT=4 freezes ['res4'], where MODEL.NONLOCAL places" in caplog.text


def test_norm_choices():
    for norm, cls in (
        ("GN", torch.nn.GroupNorm),
        ("SyncBN", torch.nn.SyncBatchNorm),
        ("BN", torch.nn.BatchNorm2d),
    ):
        resnet = build_backbone(
            load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.NONLOCAL.NORM", norm)
        ).bottom_up
        assert type(resnet.res4[4].nonlocal_block.norm) is cls
    cfg = load_cfg("mask_rcnn_R50_NL.yaml")
    assert cfg.MODEL.NONLOCAL.NORM == "GN"  # trains with 1-2 images per GPU
    with pytest.raises(ValueError, match="MODEL.NONLOCAL.NORM='FrozenBN' is not allowed"):
        build_backbone(load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.NONLOCAL.NORM", "FrozenBN"))


def test_init_key_reaches_backbone_and_keypoint_head_blocks():
    cfg = load_cfg("quickstart.yaml", "MODEL.NONLOCAL.INIT", "small")
    model = build_model(cfg)
    blocks = [m for name, m in model.named_modules() if isinstance(m, NonLocalBlock2d)]
    assert len(blocks) == 5  # 1 in res4, 4 in the keypoint head
    for block in blocks:
        assert torch.equal(block.norm.weight, torch.full_like(block.norm.weight, 0.1))
    default = build_model(load_cfg("quickstart.yaml"))
    for m in default.modules():
        if isinstance(m, NonLocalBlock2d):
            assert not m.norm.weight.any()


def test_cgnl_config_builds_cgnl():
    resnet = build_backbone(load_cfg("mask_rcnn_R50_CGNL.yaml")).bottom_up
    block = resnet.res4[4].nonlocal_block
    assert isinstance(block, CGNLBlock2d) and block.groups == 8 and block.kernel == "dot"


@pytest.mark.parametrize(
    "opts,words",
    [
        (["MODEL.NONLOCAL.MODE", "softmax"], "MODEL.NONLOCAL.MODE='softmax' is not one of"),
        (["MODEL.NONLOCAL.INIT", "zero"], "MODEL.NONLOCAL.INIT='zero' is not one of"),
        (["MODEL.NONLOCAL.BLOCK", "GNL"], "MODEL.NONLOCAL.BLOCK='GNL'"),
        (
            ["MODEL.NONLOCAL.RES4", "[6]"],
            r"MODEL.NONLOCAL.RES4 = \[6\]: block index 6 does not exist; res4 has 6 blocks",
        ),
        (
            ["MODEL.NONLOCAL.RES3", "[-5]"],
            r"MODEL.NONLOCAL.RES3 = \[-5\]: block index -5 does not exist",
        ),
        (
            [
                "MODEL.NONLOCAL.RES5",
                "[0]",
                "MODEL.RESNETS.OUT_FEATURES",
                "['res2', 'res3', 'res4']",
                "MODEL.FPN.IN_FEATURES",
                "['res2', 'res3', 'res4']",
            ],
            "MODEL.NONLOCAL.RES5 = \\[0\\] places blocks in res5, but",
        ),
        (["MODEL.NONLOCAL.REDUCTION", "3"], "MODEL.NONLOCAL.REDUCTION.*reduction=3 must divide"),
        (
            ["MODEL.NONLOCAL.BLOCK", "CGNL", "MODEL.NONLOCAL.CGNL.GROUPS", "7"],
            "CGNL.GROUPS.*groups=7 must divide",
        ),
        (
            ["MODEL.NONLOCAL.NORM", "LayerNormX"],
            "MODEL.NONLOCAL.NORM='LayerNormX' is not a known norm",
        ),
    ],
)
def test_bad_config_fails_at_build_naming_the_key(opts, words):
    with pytest.raises(ValueError, match=words):
        build_backbone(load_cfg("mask_rcnn_R50_NL.yaml", *opts))


def _c2_name(d2_key):
    """Inverse of Detectron2's Caffe2 ResNet name conversion, for backbone keys."""
    key = re.sub(r"\.norm\.weight$", ".bn.s", d2_key)
    key = re.sub(r"\.norm\.bias$", ".bn.b", key)
    key = re.sub(r"^stem\.conv1\.bn\.", "res_conv1_bn.", key)
    key = re.sub(r"^stem\.conv1\.", "conv1.", key)
    for ours, theirs in (
        (".shortcut.", ".branch1."),
        (".conv1.", ".branch2a."),
        (".conv2.", ".branch2b."),
        (".conv3.", ".branch2c."),
    ):
        key = key.replace(ours, theirs)
    key = re.sub(r"\.weight$", ".w", key)
    key = re.sub(r"\.bias$", ".b", key)
    return key.replace(".", "_")


def _save_checkpoints(stock, tmp_path):
    """The stock model's weights as a trainer .pth, a model-zoo .pkl, and a Caffe2 ImageNet .pkl."""
    state = stock.state_dict()
    pth = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 7}, pth)
    zoo = tmp_path / "model_zoo.pkl"
    with open(zoo, "wb") as f:
        pickle.dump(
            {
                "model": {k: v.numpy() for k, v in state.items()},
                "__author__": "Detectron2 Model Zoo",
            },
            f,
        )
    c2 = tmp_path / "R-101.pkl"
    blobs = {}
    for k, v in state.items():
        if k.startswith("backbone.bottom_up.") and not k.endswith(
            ("running_mean", "running_var", "num_batches_tracked")
        ):
            blobs[_c2_name(k[len("backbone.bottom_up.") :])] = v.numpy()
    assert "res4_22_branch2a_w" in blobs and "conv1_w" in blobs and "res_conv1_bn_s" in blobs
    with open(c2, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    return {"pth": str(pth), "zoo": str(zoo), "caffe2": str(c2)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "stock_config,nl_config",
    [
        ("mask_rcnn_R101_baseline.yaml", "mask_rcnn_R101_NL.yaml"),
        ("keypoint_rcnn_R101_baseline.yaml", "keypoint_rcnn_R101_NL_head_backbone.yaml"),
    ],
)
def test_stock_checkpoints_load_with_only_nonlocal_keys_missing_and_same_outputs(
    stock_config, nl_config, tmp_path
):
    torch.manual_seed(0)
    stock = build_model(load_cfg(stock_config)).eval()
    for p in stock.parameters():  # away from init, so that a wrong match would show
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.uniform_(p, 0.5, 1.5)
    files = _save_checkpoints(stock, tmp_path)
    for kind, path in files.items():
        nl = build_model(load_cfg(nl_config)).eval()
        nl_init = {k: v.clone() for k, v in nl.state_dict().items() if k in nonlocal_keys(nl)}
        reference = load_checkpoint(build_model(load_cfg(stock_config)), path)
        incompatible = load_checkpoint(nl, path)
        missing = set(incompatible.missing_keys) - set(reference.missing_keys)
        assert missing == nonlocal_keys(nl), kind
        assert incompatible.unexpected_keys == reference.unexpected_keys == []
        for k, v in nl_init.items():
            assert torch.equal(nl.state_dict()[k], v), f"{kind}: {k} was overwritten"
        loaded = {k: v for k, v in nl.state_dict().items() if k not in nl_init}
        if kind != "caffe2":
            for k, v in stock.state_dict().items():
                assert torch.equal(loaded[k], v), f"{kind}: {k}"
            image = training_input(128, 160)["image"]
            with torch.no_grad():
                (a,), (b,) = stock([{"image": image}]), nl([{"image": image}])
            assert len(a["instances"]) > 0
            assert_instances_allclose(a["instances"], b["instances"], rtol=0, msg=kind)
        else:
            for k, v in stock.state_dict().items():
                if k.startswith("backbone.bottom_up.") and "running" not in k:
                    assert torch.equal(loaded[k], v), f"caffe2: {k}"


def _keypoint_head(pooler_resolution=14):
    cfg = load_cfg("keypoint_rcnn_R101_NL_head.yaml")
    return build_keypoint_head(
        cfg, ShapeSpec(channels=256, height=pooler_resolution, width=pooler_resolution)
    )


def test_keypoint_head_layout_and_identity_at_init():
    from detectron2.modeling.roi_heads.keypoint_head import KRCNNConvDeconvUpsampleHead

    torch.manual_seed(0)
    head = _keypoint_head()
    names = [n for n, _ in head.named_children()]
    stock_layers = [n for k in range(1, 9) for n in (f"conv_fcn{k}", f"conv_fcn_relu{k}")]
    # the stock head's layers, then the blocks (``layers`` runs each after its conv's ReLU)
    assert names == stock_layers + ["score_lowres"] + [f"nonlocal_fcn{k}" for k in (2, 4, 6, 8)]
    torch.manual_seed(0)
    cfg = load_cfg("keypoint_rcnn_R101_baseline.yaml")
    stock = KRCNNConvDeconvUpsampleHead(cfg, ShapeSpec(channels=256, height=14, width=14))
    # same seed, same stock layers: the head draws them as the stock head does, then the blocks
    head_state = head.state_dict()
    assert set(head_state) - set(stock.state_dict()) == {
        k for k in head_state if k.startswith("nonlocal_fcn")
    }
    for k, v in stock.state_dict().items():
        assert torch.equal(head_state[k], v), k
    # the blocks survived the head's MSRA init: zero norm weight, non-zero embeddings
    assert (
        torch.all(head.nonlocal_fcn2.norm.weight == 0)
        and head.nonlocal_fcn2.theta.weight.abs().sum() > 0
    )
    x = torch.randn(5, 256, 14, 14)
    head.eval(), stock.eval()
    assert torch.equal(head.layers(x), stock.layers(x))
    # with the blocks switched on, each runs right after its conv's ReLU
    randomize_nonlocal_norms(head)
    expected = x
    for k in range(1, 9):
        expected = torch.relu(getattr(stock, f"conv_fcn{k}")(expected))
        if k % 2 == 0:
            expected = getattr(head, f"nonlocal_fcn{k}")(expected)
    expected = torch.nn.functional.interpolate(
        stock.score_lowres(expected), scale_factor=2.0, mode="bilinear"
    )
    torch.testing.assert_close(head.layers(x), expected)


@pytest.mark.parametrize("resolution", [14, 7, 9, 1])
def test_keypoint_head_any_resolution_and_zero_rois(resolution):
    head = _keypoint_head(resolution).train()
    randomize_nonlocal_norms(head)
    for num_rois in (3, 0):
        x = torch.randn(num_rois, 256, resolution, resolution, requires_grad=True)
        out = head.layers(x)
        assert out.shape[0] == num_rois and out.shape[1] == 17
        inst = Instances((64, 64))
        inst.proposal_boxes = __import__("detectron2.structures", fromlist=["Boxes"]).Boxes(
            torch.zeros(0, 4)
        )
        if num_rois == 0:
            with EventStorage():
                losses = head(x, [inst])
            assert losses["loss_keypoint"].item() == 0
            losses["loss_keypoint"].backward()


@pytest.mark.parametrize(
    "opts,words",
    [
        (
            ["MODEL.ROI_KEYPOINT_HEAD.NUM_NONLOCAL", "5"],
            "NUM_NONLOCAL=5 blocks, one every NONLOCAL_EVERY=2 convs, need 10",
        ),
        (["MODEL.ROI_KEYPOINT_HEAD.NONLOCAL_EVERY", "0"], "NONLOCAL_EVERY=0: must be an int >= 1"),
    ],
)
def test_keypoint_head_bad_config(opts, words):
    with pytest.raises(ValueError, match=words):
        cfg = load_cfg("keypoint_rcnn_R101_NL_head.yaml", *opts)
        build_keypoint_head(cfg, ShapeSpec(channels=256, height=14, width=14))


def test_frozen_stage_converts_nonlocal_bn():
    resnet = build_backbone(
        load_cfg(
            "mask_rcnn_R50_NL.yaml", "MODEL.NONLOCAL.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "5"
        )
    ).bottom_up
    assert isinstance(resnet.res4[4].nonlocal_block.norm, FrozenBatchNorm2d)


def _perturb(model):
    """Move every parameter away from its initialisation, so that a wrong match would show."""
    with torch.no_grad():
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.uniform_(
                p, 0.5, 1.5
            )
    return model


def _same_outputs(a, b, msg=""):
    """Two models' inference outputs (lists of dicts) are equal."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y), msg
        for key in x:
            if key == "instances":
                assert_instances_allclose(x[key], y[key], rtol=0, msg=f"{msg} {key}")
            elif key == "panoptic_seg":
                assert torch.equal(x[key][0], y[key][0]) and x[key][1] == y[key][1], f"{msg} {key}"
            else:
                assert torch.equal(x[key], y[key]), f"{msg} {key}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,opts",
    [
        ("mask_rcnn_R50_NL.yaml", ["MODEL.RESNETS.DEPTH", "50"]),
        ("keypoint_rcnn_R101_NL_head_backbone.yaml", ["MODEL.RESNETS.DEPTH", "50"]),
    ],
)
def test_whole_model_pickles_and_deepcopies(config, opts, tmp_path):
    """
    torch.save(model) + torch.load(weights_only=False), and copy.deepcopy, give the same model.
    """
    cfg = load_cfg(config, *opts, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    torch.manual_seed(0)
    model = _perturb(build_model(cfg)).eval()
    randomize_nonlocal_norms(model)
    inputs = [{"image": training_input(128, 160)["image"]}]
    with torch.no_grad():
        expected = model(inputs)
    assert len(expected[0]["instances"]) > 0
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    for name, copied in (("torch.load", loaded), ("deepcopy", copy.deepcopy(model))):
        assert type(copied.backbone.bottom_up.res4[-2]).__name__ == "NonLocalBottleneckBlock", name
        assert nonlocal_keys(copied) == nonlocal_keys(model)
        with torch.no_grad():
            _same_outputs(expected, copied(inputs), name)


# Detectron2's stock configs (shipped inside its package) and the stock backbone each builds.
STOCK_FAMILIES = {
    "retinanet": "COCO-Detection/retinanet_R_50_FPN_3x.yaml",
    "faster_rcnn_c4": "COCO-Detection/faster_rcnn_R_50_C4_3x.yaml",
    "mask_rcnn_fpn": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
    "panoptic_fpn": "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml",
    "cascade_mask_rcnn": "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
}
SMALL_STOCK = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.WEIGHTS",
    "",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "200",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "100",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "64",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "MODEL.RETINANET.SCORE_THRESH_TEST",
    "0.0",
]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(STOCK_FAMILIES))
def test_stock_detectron2_configs_gain_blocks_through_keys(family, tmp_path):
    """
    A stock model-zoo config plus two keys (MODEL.BACKBONE.NAME build_nonlocal_backbone,
    MODEL.NONLOCAL.BACKBONE_NAME its own backbone) builds the stock model with one non-local
    block in res4: stock checkpoints load with only its keys missing, the outputs are then the
    stock model's, and it trains.
    """
    config = model_zoo.get_config_file(STOCK_FAMILIES[family])
    stock_cfg = get_nonlocal_cfg(config, SMALL_STOCK)
    keys = [
        "MODEL.BACKBONE.NAME",
        "build_nonlocal_backbone",
        "MODEL.NONLOCAL.BACKBONE_NAME",
        stock_cfg.MODEL.BACKBONE.NAME,
    ]
    nl_cfg = get_nonlocal_cfg(config, [*SMALL_STOCK, *keys])
    torch.manual_seed(0)
    stock = _perturb(build_model(stock_cfg)).eval()
    torch.save({"model": stock.state_dict()}, tmp_path / "stock.pth")
    nl = build_model(nl_cfg).eval()

    resnet = getattr(nl.backbone, "bottom_up", nl.backbone)
    prefix = "backbone.bottom_up." if hasattr(nl.backbone, "bottom_up") else "backbone."
    assert {k.split(".nonlocal_block.")[0] for k in nonlocal_keys(nl)} == {
        f"{prefix}res4.4"
    }  # R50: 6 blocks, -2
    assert type(resnet.res4[4]).__name__ == "NonLocalBottleneckBlock"
    incompatible = load_checkpoint(nl, str(tmp_path / "stock.pth"))
    assert (
        set(incompatible.missing_keys) == nonlocal_keys(nl) and incompatible.unexpected_keys == []
    )

    sample = training_input(128, 160, num_classes=2, keypoints=False)
    sample["sem_seg"] = torch.randint(0, 54, (128, 160))  # panoptic FPN's stuff labels
    with torch.no_grad():
        expected, actual = stock([{"image": sample["image"]}]), nl([{"image": sample["image"]}])
    assert len(expected[0]["instances"]) > 0
    _same_outputs(expected, actual, family)

    randomize_nonlocal_norms(nl)
    nl.train()
    optimizer = torch.optim.SGD(nl.parameters(), lr=1e-3)
    before = resnet.res4[4].nonlocal_block.norm.weight.detach().clone()
    with EventStorage():
        losses = nl([sample])
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    optimizer.step()
    assert not torch.equal(resnet.res4[4].nonlocal_block.norm.weight, before)
    nl.eval()
    with torch.no_grad():
        (out,) = nl([{"image": sample["image"]}])
    assert isinstance(out["instances"], Instances)


@pytest.mark.parametrize(
    "opts,words",
    [
        (
            ["MODEL.NONLOCAL.BACKBONE_NAME", "build_nonlocal_backbone"],
            "is a non-local backbone itself",
        ),
        (
            ["MODEL.NONLOCAL.BACKBONE_NAME", "build_resnet_fpn"],
            "'build_resnet_fpn' is not a registered backbone",
        ),
        (
            ["MODEL.NONLOCAL.BACKBONE_NAME", "build_test_backbone_without_resnet"],
            "with no Detectron2 ResNet",
        ),
        (
            [
                "MODEL.NONLOCAL.BACKBONE_NAME",
                "build_resnet_backbone",
                "MODEL.RESNETS.OUT_FEATURES",
                "['res4']",
                "MODEL.NONLOCAL.RES5",
                "[0]",
            ],
            r"RES5 = \[0\] places blocks in res5, but this ResNet builds only \['res2', 'res3', "
            r"'res4'\]",
        ),
    ],
)
def test_bad_backbone_name_fails_at_build_naming_the_key(opts, words):
    with pytest.raises(ValueError, match=words):
        build_backbone(load_cfg("mask_rcnn_R50_NL.yaml", *opts))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(stride=2, stride_in_1x1=False),
        dict(stride=2, stride_in_1x1=True),
        dict(stride=1, dilation=2),
        dict(stride=1, num_groups=4, dilation=4),
    ],
    ids=["stride-3x3", "stride-1x1", "dilation-2", "groups-4-dilation-4"],
)
def test_variant_is_rebuilt_from_the_built_block(kwargs):
    """Whatever arguments built a block, its variant has its layers, weights and outputs."""
    torch.manual_seed(0)
    block = BottleneckBlock(128, 256, bottleneck_channels=64, norm="FrozenBN", **kwargs).eval()
    block.freeze()
    rebuilt = attached_variant(block, nonlocal_block=torch.nn.Identity(), where="res3.0")
    x = torch.randn(1, 128, 8, 8)
    assert torch.equal(rebuilt(x), block(x))
    assert not any(p.requires_grad for p in rebuilt.parameters())  # frozen, as the block


def test_block_built_with_settings_a_variant_cannot_take_is_refused():
    block = BottleneckBlock(128, 256, bottleneck_channels=64, stride=2, norm="FrozenBN")
    block.conv2.padding = (0, 0)  # what no argument of BottleneckBlock sets
    with pytest.raises(ValueError, match=r"res3.0: rebuilt from its own layers, its conv2 is"):
        attached_variant(block, nonlocal_block=torch.nn.Identity(), where="res3.0")


def test_one_factory_for_config_and_keywords():
    """The same factory, and the same checks, from a config (errors name keys) and from keywords
    (LazyConfig; errors name arguments)."""
    from nonlocal_det.modeling import nonlocal_block_factory

    from_cfg = nonlocal_block_factory(load_cfg("mask_rcnn_R50_CGNL.yaml"))(64)
    from_kwargs = nonlocal_block_factory(block="CGNL", kernel="dot", groups=8, norm="GN")(64)
    assert (
        type(from_cfg) is type(from_kwargs) is CGNLBlock2d
        and from_cfg.extra_repr() == from_kwargs.extra_repr()
    )
    assert (
        type(nonlocal_block_factory(block="NL", norm="naiveSyncBN_N")(64).norm).__name__
        == "NaiveSyncBatchNorm"
    )
    for kwargs, words in [
        ({"mode": "softmax"}, "mode='softmax' is not one of"),
        ({"norm": "FrozenBN"}, "norm='FrozenBN' is not allowed"),
        (
            {"kernel": "dot"},
            r"block='NL': NonLocalBlock2d got an unexpected keyword argument 'kernel'",
        ),
    ]:
        with pytest.raises(ValueError, match=words):
            nonlocal_block_factory(block="NL", **kwargs)
    with pytest.raises(
        ValueError,
        match="Cannot build a NL block for 63 channels from reduction: reduction=2 must divide",
    ):
        nonlocal_block_factory(block="NL", reduction=2)(63)


FAMILY_KEYS = {
    "GC": [
        "MODEL.NONLOCAL.RES4",
        "[]",
        "MODEL.NONLOCAL.GC.STAGES",
        "['res3', 'res4', 'res5']",
    ],
    "DNL": ["MODEL.NONLOCAL.BLOCK", "DNL"],
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILY_KEYS))
@pytest.mark.parametrize(
    "zoo_config",
    [
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
        "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml",
    ],
)
def test_zoo_configs_with_gc_or_dnl_load_stock_weights_and_equal_stock_at_init(
    zoo_config, family, tmp_path
):
    """A stock checkpoint loads with only the new block's keys missing; outputs are the stock's."""
    from detectron2.checkpoint import DetectionCheckpointer

    from nonlocal_det.harness.config import get_nonlocal_cfg

    base = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]
    stock_cfg = get_nonlocal_cfg(model_zoo.get_config_file(zoo_config), base)
    ours_cfg = get_nonlocal_cfg(
        model_zoo.get_config_file(zoo_config),
        [
            *base,
            "MODEL.META_ARCHITECTURE",
            "NonLocalGeneralizedRCNN",
            "MODEL.BACKBONE.NAME",
            "build_nonlocal_backbone",
            *FAMILY_KEYS[family],
        ],
    )
    torch.manual_seed(0)
    stock = build_model(stock_cfg).eval()
    for p in stock.parameters():  # away from init, so that a wrong match would show
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.uniform_(p, 0.5, 1.5)
    DetectionCheckpointer(stock, save_dir=str(tmp_path)).save("stock")
    ours = build_model(ours_cfg).eval()
    new_keys = nonlocal_keys(ours)
    key = ".context_block." if family == "GC" else ".nonlocal_block."
    assert new_keys and all(key in k for k in new_keys)
    incompatible = load_checkpoint(ours, str(tmp_path / "stock.pth"))
    assert set(incompatible.missing_keys) == new_keys and incompatible.unexpected_keys == []
    image = training_input(128, 160)["image"]
    with torch.no_grad():
        (a,), (b,) = stock([{"image": image}]), ours([{"image": image}])
    assert len(a["instances"]) > 0
    assert_instances_allclose(a["instances"], b["instances"], rtol=0)


def test_a_non_local_meta_architecture_around_a_backbone_without_a_resnet_is_refused():
    """A model that asks for blocks and can hold none is an error naming the backbone's class."""
    from detectron2.modeling import BACKBONE_REGISTRY, Backbone

    from nonlocal_det.errors import ConfigError

    class PatchEmbedding(Backbone):  # a transformer's stem stands in for ViTDet or MViTv2
        def __init__(self, cfg, input_shape):
            super().__init__()
            self.proj = torch.nn.Conv2d(3, 256, 16, stride=16)

        def forward(self, x):
            return {"p4": self.proj(x)}

        def output_shape(self):
            return {"p4": ShapeSpec(channels=256, stride=16)}

    if "PatchEmbedding" not in BACKBONE_REGISTRY:
        BACKBONE_REGISTRY.register(PatchEmbedding)
    cfg = load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.BACKBONE.NAME", "PatchEmbedding")
    cfg.MODEL.merge_from_list(
        ["RPN.IN_FEATURES", ["p4"], "ROI_HEADS.IN_FEATURES", ["p4"]]
        + ["ANCHOR_GENERATOR.SIZES", [[32, 64]]]
    )
    with pytest.raises(ConfigError, match="its backbone is a .*PatchEmbedding, which has none"):
        build_model(cfg)
    stages = {"res4": torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))}
    with pytest.raises(ConfigError, match="not a ResNet's"):
        insert_nonlocal_blocks(stages, {"res4": [-2]}, lambda c: NonLocalBlock2d(c))
