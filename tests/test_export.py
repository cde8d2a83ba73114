"""
Exporting non-local models for deployment the way Detectron2 exports its own (skipped without
Detectron2): whole models through ``TracingAdapter`` + ``torch.jit.trace`` (what its
tools/deploy/export_model.py does), the NL keypoint head with varying RoI counts, and the NL
ResNet-FPN backbone through ``torch.jit.trace``, ``torch.export`` and ONNX. Every exported
model is compared with the eager one. docs/export.md says what cannot be exported and why.
"""

import contextlib
import importlib.util

import pytest
import torch

from helpers import HAS_DETECTRON2, load_cfg, randomize_nonlocal_norms
from nonlocal_det.layers import CGNLBlock2d, NonLocalBlock2d
from nonlocal_det.layers.aggregation import explicit_matrix_fits

pytestmark = [
    pytest.mark.detectron2,
    # Detectron2's own code warns on every trace; these tests compare outputs instead, and
    # docs/export.md lists the warnings raised in nonlocal_det.
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

if HAS_DETECTRON2:
    from detectron2.export import TracingAdapter
    from detectron2.export.torchscript_patch import patch_builtin_len
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone, build_model
    from detectron2.modeling.roi_heads import build_keypoint_head
    from detectron2.structures import Boxes, Instances

# R18-FPN with GroupNorm (random weights keep activations in range), few classes and RoIs,
# and every detection kept so that random models output some.
SMALL_MODEL = (
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "64",
    "MODEL.RESNETS.NORM",
    "GN",
    "MODEL.FPN.NORM",
    "GN",
    "MODEL.FPN.OUT_CHANNELS",
    "64",
    "MODEL.ROI_HEADS.NUM_CLASSES",
    "3",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "200",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "50",
    "TEST.DETECTIONS_PER_IMAGE",
    "10",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "128",
    "MODEL.ROI_MASK_HEAD.CONV_DIM",
    "32",
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS",
    "(32, 32, 32, 32, 32, 32, 32, 32)",
)
TRACE_HW = (128, 160)
OTHER_HW = (100, 200)  # padded to 128 x 224: another feature-map size at every level


def random_image(height, width, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=gen).float()


def small_model(config, *opts):
    torch.manual_seed(0)
    model = build_model(load_cfg(config, *SMALL_MODEL, *opts)).eval()
    randomize_nonlocal_norms(model)
    return model


def inference(model, inputs):
    """What export_model.py traces: raw RoI masks and heatmaps, no resizing to the input size."""
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


@contextlib.contextmanager
def residual_changes(model):
    """Yields {name: max |block(x) - x|} for every NL/CGNL block that runs inside the context."""
    changes, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, (NonLocalBlock2d, CGNLBlock2d)):

            def record(mod, args, out, name=name):
                change = (out - args[0]).abs().max().item() if out.numel() else 0.0
                changes[name] = max(changes.get(name, 0.0), change)

            handles.append(module.register_forward_hook(record))
    try:
        yield changes
    finally:
        for handle in handles:
            handle.remove()


def assert_same_instances(expected, actual, fields):
    """
    Same detections and fields. Float tolerances allow a different attention kernel in the
    export than in eager (heatmaps then differ by ~2e-4 after the head's 4 blocks); a
    non-local block changed by 2% moves boxes by pixels.
    """
    assert len(expected) > 0
    assert set(expected.get_fields()) == set(actual.get_fields()) == fields
    assert tuple(int(s) for s in actual.image_size) == expected.image_size  # a tensor when traced
    for field in sorted(fields):
        a, b = expected.get(field), actual.get(field)
        a, b = getattr(a, "tensor", a), getattr(b, "tensor", b)
        torch.testing.assert_close(
            b, a, rtol=1e-4, atol=1e-3, msg=lambda m, field=field: f"{field}: {m}"
        )


MASK_FIELDS = {"pred_boxes", "scores", "pred_classes", "pred_masks"}
KEYPOINT_FIELDS = {
    "pred_boxes",
    "scores",
    "pred_classes",
    "pred_keypoints",
    "pred_keypoint_heatmaps",
}


@pytest.mark.parametrize(
    "config,fields,num_blocks",
    [
        ("mask_rcnn_R50_NL.yaml", MASK_FIELDS, 1),
        (
            "keypoint_rcnn_R101_NL_head_backbone.yaml",
            KEYPOINT_FIELDS,
            5,
        ),  # res4 + 4 in the keypoint head
    ],
)
def test_traced_model_matches_eager_on_other_image_sizes(config, fields, num_blocks, tmp_path):
    """
    Detectron2's tracing export (its own tests trace at one size and run at another),
    saved and loaded back as a deployment would, gives the eager outputs with the
    non-local blocks active.
    """
    model = small_model(config)
    example = random_image(*TRACE_HW, seed=0)
    adapter = TracingAdapter(model, [{"image": example}], inference).eval()
    with torch.no_grad():
        traced = torch.jit.trace(adapter, (example,), check_trace=False)  # compared below instead
    torch.jit.save(traced, str(tmp_path / "model.ts"))
    traced = torch.jit.load(str(tmp_path / "model.ts"))
    for image in (example, random_image(*OTHER_HW, seed=1)):
        # A traced model attends over the padded map (MODEL.NONLOCAL.VALID_REGION is not traced,
        # docs/export.md): at OTHER_HW, which is padded, it is the key-off model.
        model.valid_region = image is example
        with torch.no_grad(), residual_changes(model) as changes:
            (expected,) = inference(model, [{"image": image}])
            actual = adapter.outputs_schema(traced(image))
        assert len(changes) == num_blocks and min(changes.values()) > 0.1, changes
        assert_same_instances(expected["instances"], actual[0]["instances"], fields)


def test_traced_keypoint_head_takes_any_number_of_rois():
    """
    As Detectron2's own keypoint-head tracing test: RoI counts per image change after tracing, down
    to zero.
    """

    class HeadOnBoxes(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, features, boxes1, boxes2):
            instances = [Instances((100, 100), pred_boxes=Boxes(b)) for b in (boxes1, boxes2)]
            outputs = self.head(features, instances)
            return tuple(t for i in outputs for t in (i.pred_keypoints, i.pred_keypoint_heatmaps))

    cfg = load_cfg("keypoint_rcnn_R101_NL_head.yaml", *SMALL_MODEL)
    torch.manual_seed(0)
    model = HeadOnBoxes(
        build_keypoint_head(cfg, ShapeSpec(channels=16, height=14, width=14))
    ).eval()
    randomize_nonlocal_norms(model.head)

    def rois(n1, n2):
        boxes = [torch.rand(n, 2) * 50 for n in (n1, n2)]
        boxes = [torch.cat([b, b + 10 + torch.rand(len(b), 2) * 40], dim=1) for b in boxes]
        return torch.randn(n1 + n2, 16, 14, 14), *boxes

    with torch.no_grad(), patch_builtin_len():
        traced = torch.jit.trace(model, rois(5, 4), check_trace=False)
    for counts in ((5, 4), (3, 6), (0, 2), (0, 0)):
        inputs = rois(*counts)
        with torch.no_grad(), residual_changes(model) as changes:
            expected = model(*inputs)
            actual = traced(*inputs)
        assert [t.shape[0] for t in actual] == [counts[0], counts[0], counts[1], counts[1]]
        if sum(counts):
            assert len(changes) == 4 and min(changes.values()) > 0.1, changes
        # The trace takes explicit products, eager the fused kernel at this size: four blocks
        # and eight convs later, heatmap logits differ by up to ~1e-3, which can move the
        # argmax of a heatmap with two near-equal peaks (a keypoint), rarely.
        for keypoints, heatmaps in ((0, 1), (2, 3)):
            torch.testing.assert_close(actual[heatmaps], expected[heatmaps], rtol=1e-4, atol=2e-3)
            same = torch.isclose(actual[keypoints], expected[keypoints], rtol=1e-4, atol=1e-3)
            assert same.all(dim=-1).float().mean() >= 0.95 if same.numel() else True


class FeatureMaps(torch.nn.Module):
    """A backbone with its {name: map} output as a tuple, which every exporter takes."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.names = list(backbone.output_shape())

    def forward(self, x):
        features = self.backbone(x)
        return tuple(features[name] for name in self.names)


def small_backbone(config, *opts):
    torch.manual_seed(0)
    backbone = build_backbone(load_cfg(config, *SMALL_MODEL, *opts))
    randomize_nonlocal_norms(backbone)
    return FeatureMaps(backbone).eval()


@pytest.fixture(scope="module")
def nl_backbone():
    """
    The NL ResNet-FPN with a block in res3 too: at LARGE, res3 switches to the fused attention path.
    """
    return small_backbone("mask_rcnn_R50_NL.yaml", "MODEL.NONLOCAL.RES3", "[-1]")


SMALL = (1, 3, *TRACE_HW)
LARGE = (1, 3, 256, 288)


def explicit_paths(net, x):
    """
    {NL block name: whether softmax_aggregate builds the N x M matrix (else fused attention) at
    input x}.
    """
    paths, handles = {}, []
    for name, module in net.named_modules():
        if isinstance(module, NonLocalBlock2d):

            def record(mod, args, name=name):
                paths[name] = explicit_matrix_fits(*(t.flatten(2) for t in mod.embed(args[0])))

            handles.append(module.register_forward_pre_hook(record))
    with torch.no_grad():
        net(x)
    for handle in handles:
        handle.remove()
    return paths


def assert_same_maps(expected, actual):
    """The five FPN maps (p2-p6) agree; the NL blocks' residuals are O(1) (see residual_changes)."""
    assert len(expected) == len(actual) == 5
    for e, a in zip(expected, actual):
        torch.testing.assert_close(torch.as_tensor(a), e, rtol=1e-4, atol=1e-4)


def test_backbone_trace_runs_at_sizes_where_eager_takes_the_other_attention_path(nl_backbone):
    """
    A trace holds one of softmax_aggregate's two attention paths, which eager picks by size
    (explicit_matrix_fits); at sizes where eager picks the other one, outputs still match.
    """
    small, large = torch.randn(SMALL), torch.randn(LARGE)
    paths_small, paths_large = (
        explicit_paths(nl_backbone, small),
        explicit_paths(nl_backbone, large),
    )
    assert len(paths_small) == 2 and all(paths_small.values()) and not all(paths_large.values())
    with torch.no_grad():
        traced = torch.jit.trace(nl_backbone, (small,), check_trace=False)
        for x in (small, torch.randn(1, 3, 96, 224), large):
            assert_same_maps(nl_backbone(x), traced(x))


def dynamic_height_width():
    # Multiples of 32, as Detectron2 pads images for FPN; at least 96 so that p6 is wider than 1.
    height, width = (
        torch.export.Dim("height", min=3, max=64),
        torch.export.Dim("width", min=3, max=64),
    )
    return {"x": {2: 32 * height, 3: 32 * width}}


@pytest.fixture(scope="module")
def exported_nl_backbone(nl_backbone):
    """torch.export of nl_backbone at SMALL, with dynamic height and width."""
    return torch.export.export(
        nl_backbone, (torch.randn(SMALL),), dynamic_shapes=dynamic_height_width()
    ).module()


def test_backbone_torch_export_with_dynamic_height_and_width(nl_backbone, exported_nl_backbone):
    inputs = [torch.randn(SMALL), torch.randn(1, 3, 96, 224), torch.randn(1, 3, 224, 128)]
    assert all(all(explicit_paths(nl_backbone, x).values()) for x in inputs)
    with torch.no_grad():
        for x in inputs:
            assert_same_maps(nl_backbone(x), exported_nl_backbone(x))


def test_backbone_torch_export_across_attention_paths(nl_backbone, exported_nl_backbone):
    large = torch.randn(LARGE)
    with torch.no_grad():
        assert_same_maps(nl_backbone(large), exported_nl_backbone(large))


@pytest.mark.parametrize(
    "opts",
    [
        [],
        ["MODEL.NONLOCAL.CGNL.USE_SCALE", "True", "MODEL.NONLOCAL.NORM", "BN"],
    ],
)
def test_cgnl_backbone_trace_at_other_size(opts):
    net = small_backbone("mask_rcnn_R50_CGNL.yaml", *opts)
    small, other = torch.randn(SMALL), torch.randn(1, 3, 96, 224)
    with torch.no_grad():
        traced = torch.jit.trace(net, (small,), check_trace=False)
        with residual_changes(net) as changes:
            expected = net(other)
        assert len(changes) == 1 and min(changes.values()) > 0.1
        assert_same_maps(expected, traced(other))


def require_modules(*names):
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        pytest.skip(
            "ONNX export needs packages nonlocal_det does not depend on; missing: "
            f"{', '.join(missing)} "
            "(pip install onnx onnxruntime onnxscript)"
        )


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_backbone_onnx_matches_eager(nl_backbone, dynamo, tmp_path):
    require_modules("onnx", "onnxruntime", *(["onnxscript"] if dynamo else []))
    import onnxruntime

    path = str(tmp_path / "backbone.onnx")
    small = torch.randn(SMALL)
    if dynamo:
        dynamic = {"dynamic_shapes": dynamic_height_width()}
    else:
        dynamic = {"dynamic_axes": {"x": {2: "height", 3: "width"}}}
    # the legacy exporter at Detectron2's opset (11); the torch.export-based one at its own
    # (18: onnx's converter has no adapter down to 11, for any model)
    opset = {} if dynamo else {"opset_version": 11}
    torch.onnx.export(
        nl_backbone, (small,), path, input_names=["x"], dynamo=dynamo, **dynamic, **opset
    )
    onnx_runtime = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for x in (small, torch.randn(LARGE)):
            assert_same_maps(nl_backbone(x), onnx_runtime.run(None, {"x": x.numpy()}))


def test_mask_rcnn_onnx_matches_eager(tmp_path):
    """
    The TracingAdapter route of export_model.py --format onnx, with opset 16: Detectron2's
    STABLE_ONNX_OPSET_VERSION (11) has no aligned RoIAlign, so its boxes and masks differ
    from eager for the stock model as well.
    """
    require_modules("onnx", "onnxruntime")
    import onnxruntime

    model = small_model("mask_rcnn_R50_NL.yaml")
    example = random_image(*TRACE_HW, seed=0)
    adapter = TracingAdapter(model, [{"image": example}], inference).eval()
    path = str(tmp_path / "model.onnx")
    torch.onnx.export(
        adapter,
        (example,),
        path,
        dynamo=False,
        opset_version=16,
        input_names=["image"],
        dynamic_axes={"image": {1: "height", 2: "width"}},
    )
    onnx_runtime = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for image in (example, random_image(*OTHER_HW, seed=1)):
        model.valid_region = image is example  # the export attends over the padding
        with torch.no_grad():
            (expected,) = inference(model, [{"image": image}])
        outputs = [torch.from_numpy(o) for o in onnx_runtime.run(None, {"image": image.numpy()})]
        assert_same_instances(
            expected["instances"], adapter.outputs_schema(outputs)[0]["instances"], MASK_FIELDS
        )


def test_scripting_is_refused_in_one_line_naming_the_export_paths():
    """torch.jit.script of a whole model stops at its first block, before compiling anything."""
    from nonlocal_det.errors import UnsupportedSetupError

    model = build_model(load_cfg("mask_rcnn_R50_NL.yaml", *SMALL_MODEL)).eval()
    with pytest.raises(UnsupportedSetupError) as e:
        torch.jit.script(model)
    message = str(e.value)
    assert "\n" not in message and "cannot be scripted" in message
    assert "torch.jit.trace" in message and "any opset from 11" in message


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("kind", ["NL", "DNL", "CGNL", "GC"])
def test_every_block_exports_to_onnx_at_detectron2s_opset_and_after(kind, opset, tmp_path):
    """
    While exporting, the attention is explicit products and softmax, which every opset from 11
    has; onnxruntime equals eager to 1e-4 at the traced size and another one.
    """
    require_modules("onnx", "onnxruntime")
    import onnxruntime

    from nonlocal_det.layers import DisentangledNonLocal2d, GlobalContextBlock2d

    make = {
        "NL": lambda: NonLocalBlock2d(16, init="standard"),
        "DNL": lambda: DisentangledNonLocal2d(16, init="standard"),
        "CGNL": lambda: CGNLBlock2d(16, groups=2, init="standard"),
        "GC": lambda: GlobalContextBlock2d(16, init="standard"),
    }
    torch.manual_seed(0)
    block, path = make[kind]().eval(), str(tmp_path / "block.onnx")
    x = torch.randn(1, 16, 9, 11)
    torch.onnx.export(
        block, (x,), path, opset_version=opset, dynamo=False, input_names=["x"],
        dynamic_axes={"x": {2: "height", 3: "width"}},
    )  # fmt: skip
    runtime = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for sample in (x, torch.randn(1, 16, 40, 50)):  # at 40 x 50 eager takes the fused kernel
        with torch.no_grad():
            expected = block(sample)
        (actual,) = runtime.run(None, {"x": sample.numpy()})
        torch.testing.assert_close(torch.from_numpy(actual), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_mask_rcnn_exports_at_opset_11_as_the_stock_model_does(tmp_path):
    """
    Detectron2's default opset (11) through its TracingAdapter, legacy exporter: the NL Mask
    R-CNN exports and runs in onnxruntime as the stock one does. (At 11 both differ from eager by
    the same RoIAlign; at 16 and later they equal it: ``test_mask_rcnn_onnx_matches_eager``.)
    """
    require_modules("onnx", "onnxruntime")
    import onnxruntime

    for config in ("mask_rcnn_R50_baseline.yaml", "mask_rcnn_R50_NL.yaml"):
        model = small_model(config)
        example = random_image(*TRACE_HW, seed=0)
        adapter = TracingAdapter(model, [{"image": example}], inference).eval()
        path = str(tmp_path / "model.onnx")
        torch.onnx.export(
            adapter, (example,), path, dynamo=False, opset_version=11, input_names=["image"],
            dynamic_axes={"image": {1: "height", 2: "width"}},
        )  # fmt: skip
        runtime = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        for image in (example, random_image(*OTHER_HW, seed=1)):
            outputs = [torch.from_numpy(o) for o in runtime.run(None, {"image": image.numpy()})]
            instances = adapter.outputs_schema(outputs)[0]["instances"]
            assert len(instances) == 10 and torch.isfinite(instances.pred_masks).all()
