"""Non-local backbones and keypoint head inside real Detectron2 models (skipped without Detectron2)."""
import logging
import pickle
import re

import pytest
import torch

from conftest import HAS_DETECTRON2, SHIPPED_CONFIGS

pytestmark = pytest.mark.detectron2

if HAS_DETECTRON2:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
    from detectron2.modeling import build_backbone, build_model
    from detectron2.modeling.roi_heads import build_keypoint_head
    from detectron2.structures import Instances
    from detectron2.utils.events import EventStorage

    from d2_helpers import load_cfg, randomize_nonlocal_norms, training_input
    from nonlocal_det.layers import CGNLBlock2d, NonLocalBlock2d
    from nonlocal_det.modeling import has_nonlocal


class RecordingCheckpointer(DetectionCheckpointer if HAS_DETECTRON2 else object):
    """DetectionCheckpointer that keeps the incompatible keys of its last load."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def nonlocal_keys(model):
    return {k for k in model.state_dict() if ".nonlocal_block." in k or ".nonlocal_fcn" in k}


def test_all_table_rows_shipped():
    expected = {
        "mask_rcnn_R50_baseline.yaml", "mask_rcnn_R50_NL.yaml", "mask_rcnn_R101_baseline.yaml",
        "mask_rcnn_R101_NL.yaml", "mask_rcnn_X152_baseline.yaml", "mask_rcnn_X152_NL.yaml",
        "keypoint_rcnn_R101_baseline.yaml", "keypoint_rcnn_R101_NL_head.yaml",
        "keypoint_rcnn_R101_NL_head_backbone.yaml", "mask_rcnn_R50_CGNL.yaml",
    }  # fmt: skip
    assert expected <= set(SHIPPED_CONFIGS)


@pytest.mark.parametrize("config", SHIPPED_CONFIGS)
def test_shipped_config_trains_and_infers_on_cpu(config):
    cfg = load_cfg(config, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200")
    torch.manual_seed(0)
    model = build_model(cfg)
    expects_nl = "_nl_" in cfg.MODEL.BACKBONE.NAME or cfg.MODEL.ROI_KEYPOINT_HEAD.NAME.endswith("NLHead")
    assert expects_nl == ("NL" in config or config.startswith("quickstart"))
    assert bool(nonlocal_keys(model)) == expects_nl
    randomize_nonlocal_norms(model)
    model.train()
    with EventStorage():
        losses = model([training_input(num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES)])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    nl_params = {n: p for n, p in model.named_parameters() if ".nonlocal_block." in n or ".nonlocal_fcn" in n}
    assert all(p.grad is not None for p in nl_params.values())
    # With random weights and identity FrozenBN statistics, activations reach ~1e5 deep in
    # the network and softmax saturates, so theta/phi gradients can be exactly 0 here
    # (tests/test_nonlocal_block.py checks them at sane scales); W_z and the norm always learn.
    for name, p in nl_params.items():
        if name.endswith(("norm.weight", "out.weight")):
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
        cfg = load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.NONLOCAL.RES4", res4, "MODEL.NONLOCAL.RES3", res3)
        resnet = build_backbone(cfg).bottom_up
        found = {
            stage: [i for i, block in enumerate(getattr(resnet, stage)) if has_nonlocal(block)]
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
    assert all(k.startswith("backbone.bottom_up.res4.21.nonlocal_block.") for k in nl_keys - stock_keys)


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
@pytest.mark.parametrize("backbone", ["build_resnet_nl_backbone", "build_resnet_nl_fpn_backbone"])
def test_backbone_depths_and_block_types(depth, opts, backbone):
    cfg = load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.RESNETS.DEPTH", str(depth), "MODEL.BACKBONE.NAME", backbone, *opts)
    if backbone == "build_resnet_nl_backbone":
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    model = build_backbone(cfg)
    resnet = getattr(model, "bottom_up", model)
    block = resnet.res4[-2]
    assert has_nonlocal(block) and isinstance(block.nonlocal_block, NonLocalBlock2d)
    assert block.nonlocal_block.in_channels == block.out_channels
    x = torch.randn(1, 3, 64, 96)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert set(out) == set(model.output_shape())


def test_freeze_at_leaves_nonlocal_trainable_unless_its_stage_is_frozen(caplog):
    with caplog.at_level(logging.INFO, logger="nonlocal_det"):
        resnet = build_backbone(load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.BACKBONE.FREEZE_AT", "2")).bottom_up
    nl = resnet.res4[4].nonlocal_block
    assert all(p.requires_grad for p in nl.parameters())
    assert not any(p.requires_grad for p in resnet.res2.parameters())
    assert "after res4.4: trainable" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nonlocal_det"):
        resnet = build_backbone(load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.BACKBONE.FREEZE_AT", "4")).bottom_up
    nl = resnet.res4[4].nonlocal_block
    assert not any(p.requires_grad for p in nl.parameters())
    assert "after res4.4: FROZEN" in caplog.text


def test_norm_choices():
    for norm, cls in (("GN", torch.nn.GroupNorm), ("SyncBN", torch.nn.SyncBatchNorm), ("BN", torch.nn.BatchNorm2d)):
        resnet = build_backbone(load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.NONLOCAL.NORM", norm)).bottom_up
        assert type(resnet.res4[4].nonlocal_block.norm) is cls
    cfg = load_cfg("mask_rcnn_R50_NL.yaml")
    assert cfg.MODEL.NONLOCAL.NORM == "GN"  # trains with 1-2 images per GPU
    with pytest.raises(ValueError, match="MODEL.NONLOCAL.NORM='FrozenBN' is not allowed"):
        build_backbone(load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.NONLOCAL.NORM", "FrozenBN"))


def test_cgnl_config_builds_cgnl():
    resnet = build_backbone(load_cfg("mask_rcnn_R50_CGNL.yaml")).bottom_up
    block = resnet.res4[4].nonlocal_block
    assert isinstance(block, CGNLBlock2d) and block.groups == 8 and block.kernel == "dot"


@pytest.mark.parametrize(
    "opts,words",
    [
        (["MODEL.NONLOCAL.MODE", "softmax"], "MODEL.NONLOCAL.MODE='softmax' is not one of"),
        (["MODEL.NONLOCAL.BLOCK", "GNL"], "MODEL.NONLOCAL.BLOCK='GNL'"),
        (["MODEL.NONLOCAL.RES4", "[6]"], r"MODEL.NONLOCAL.RES4 = \[6\]: block index 6 does not exist; res4 has 6 blocks"),
        (["MODEL.NONLOCAL.RES3", "[-5]"], r"MODEL.NONLOCAL.RES3 = \[-5\]: block index -5 does not exist"),
        (["MODEL.NONLOCAL.RES5", "[0]", "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4']",
          "MODEL.FPN.IN_FEATURES", "['res2', 'res3', 'res4']"], "MODEL.NONLOCAL.RES5 = \\[0\\] places non-local blocks in res5, but"),
        (["MODEL.NONLOCAL.REDUCTION", "3"], "MODEL.NONLOCAL.REDUCTION.*reduction=3 must divide"),
        (["MODEL.NONLOCAL.BLOCK", "CGNL", "MODEL.NONLOCAL.CGNL.GROUPS", "7"], "CGNL.GROUPS.*groups=7 must divide"),
        (["MODEL.NONLOCAL.NORM", "LayerNormX"], "MODEL.NONLOCAL.NORM='LayerNormX' is not a known norm"),
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
    for ours, theirs in ((".shortcut.", ".branch1."), (".conv1.", ".branch2a."), (".conv2.", ".branch2b."), (".conv3.", ".branch2c.")):
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
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    c2 = tmp_path / "R-101.pkl"
    blobs = {}
    for k, v in state.items():
        if k.startswith("backbone.bottom_up.") and not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            blobs[_c2_name(k[len("backbone.bottom_up."):])] = v.numpy()
    assert "res4_22_branch2a_w" in blobs and "conv1_w" in blobs and "res_conv1_bn_s" in blobs
    with open(c2, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    return {"pth": str(pth), "zoo": str(zoo), "caffe2": str(c2)}


@pytest.mark.parametrize(
    "stock_config,nl_config",
    [("mask_rcnn_R101_baseline.yaml", "mask_rcnn_R101_NL.yaml"),
     ("keypoint_rcnn_R101_baseline.yaml", "keypoint_rcnn_R101_NL_head_backbone.yaml")],
)
def test_stock_checkpoints_load_with_only_nonlocal_keys_missing_and_same_outputs(stock_config, nl_config, tmp_path):
    torch.manual_seed(0)
    stock = build_model(load_cfg(stock_config)).eval()
    for p in stock.parameters():  # away from init, so that a wrong match would show
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.uniform_(p, 0.5, 1.5)
    files = _save_checkpoints(stock, tmp_path)
    for kind, path in files.items():
        nl = build_model(load_cfg(nl_config)).eval()
        nl_init = {k: v.clone() for k, v in nl.state_dict().items() if k in nonlocal_keys(nl)}
        reference = build_model(load_cfg(stock_config))
        ref_ckpt = RecordingCheckpointer(reference)
        ref_ckpt.load(path)
        ckpt = RecordingCheckpointer(nl)
        ckpt.load(path)
        missing = set(ckpt.incompatible.missing_keys) - set(ref_ckpt.incompatible.missing_keys)
        assert missing == nonlocal_keys(nl), kind
        assert ckpt.incompatible.unexpected_keys == ref_ckpt.incompatible.unexpected_keys == []
        for k, v in nl_init.items():
            assert torch.equal(nl.state_dict()[k], v), f"{kind}: {k} was overwritten"
        loaded = {k: v for k, v in nl.state_dict().items() if k not in nl_init}
        if kind != "caffe2":
            for k, v in stock.state_dict().items():
                assert torch.equal(loaded[k], v), f"{kind}: {k}"
            image = training_input(128, 160)["image"]
            with torch.no_grad():
                (a,), (b,) = stock([{"image": image}]), nl([{"image": image}])
            a, b = a["instances"], b["instances"]
            assert len(a) > 0
            for field in a.get_fields():
                x, y = a.get(field), b.get(field)
                x, y = (x.tensor, y.tensor) if hasattr(x, "tensor") else (x, y)
                assert torch.equal(x, y), field
        else:
            for k, v in stock.state_dict().items():
                if k.startswith("backbone.bottom_up.") and "running" not in k:
                    assert torch.equal(loaded[k], v), f"caffe2: {k}"


def _keypoint_head(pooler_resolution=14):
    cfg = load_cfg("keypoint_rcnn_R101_NL_head.yaml")
    return build_keypoint_head(cfg, ShapeSpec(channels=256, height=pooler_resolution, width=pooler_resolution))


def test_keypoint_head_layout_and_identity_at_init():
    from detectron2.modeling.roi_heads.keypoint_head import KRCNNConvDeconvUpsampleHead

    head = _keypoint_head()
    names = [n for n, _ in head.named_children()]
    assert [n for n in names if n.startswith("nonlocal_fcn")] == ["nonlocal_fcn2", "nonlocal_fcn4", "nonlocal_fcn6", "nonlocal_fcn8"]
    assert names.index("nonlocal_fcn2") == names.index("conv_fcn_relu2") + 1
    cfg = load_cfg("keypoint_rcnn_R101_baseline.yaml")
    stock = KRCNNConvDeconvUpsampleHead(cfg, ShapeSpec(channels=256, height=14, width=14))
    missing, unexpected = head.load_state_dict(stock.state_dict(), strict=False)
    assert set(missing) == {k for k in head.state_dict() if k.startswith("nonlocal_fcn")} and not unexpected
    # the blocks survived the head's MSRA init: zero norm weight, non-zero embeddings
    assert torch.all(head.nonlocal_fcn2.norm.weight == 0) and head.nonlocal_fcn2.theta.weight.abs().sum() > 0
    x = torch.randn(5, 256, 14, 14)
    head.eval(), stock.eval()
    assert torch.equal(head.layers(x), stock.layers(x))


@pytest.mark.parametrize("resolution", [14, 7, 9, 1])
def test_keypoint_head_any_resolution_and_zero_rois(resolution):
    head = _keypoint_head(resolution).train()
    randomize_nonlocal_norms(head)
    for num_rois in (3, 0):
        x = torch.randn(num_rois, 256, resolution, resolution, requires_grad=True)
        out = head.layers(x)
        assert out.shape[0] == num_rois and out.shape[1] == 17
        inst = Instances((64, 64))
        inst.proposal_boxes = __import__("detectron2.structures", fromlist=["Boxes"]).Boxes(torch.zeros(0, 4))
        if num_rois == 0:
            with EventStorage():
                losses = head(x, [inst])
            assert losses["loss_keypoint"].item() == 0
            losses["loss_keypoint"].backward()


@pytest.mark.parametrize(
    "opts,words",
    [
        (["MODEL.ROI_KEYPOINT_HEAD.NUM_NONLOCAL", "5"], "NUM_NONLOCAL=5 blocks, one every NONLOCAL_EVERY=2 convs, need 10"),
        (["MODEL.ROI_KEYPOINT_HEAD.NONLOCAL_EVERY", "0"], "NONLOCAL_EVERY >= 1"),
    ],
)
def test_keypoint_head_bad_config(opts, words):
    cfg = load_cfg("keypoint_rcnn_R101_NL_head.yaml", *opts)
    with pytest.raises(ValueError, match=words):
        build_keypoint_head(cfg, ShapeSpec(channels=256, height=14, width=14))


def test_frozen_stage_converts_nonlocal_bn():
    resnet = build_backbone(load_cfg("mask_rcnn_R50_NL.yaml", "MODEL.NONLOCAL.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "5")).bottom_up
    assert isinstance(resnet.res4[4].nonlocal_block.norm, FrozenBatchNorm2d)
