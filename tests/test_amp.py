"""Mixed precision (float16 and bfloat16) training steps of the non-local Mask R-CNN and keypoint
models on large-valued inputs: losses, gradients and block outputs stay finite.

Detectron2's AMPTrainer runs on CUDA only, so on a CPU the steps below do what its run_step
does (autocast around the forward, GradScaler around backward and step) with CPU autocast. On a
machine with CUDA, train_net.py itself runs with SOLVER.AMP.ENABLED in both precisions."""

import pytest
import torch

from helpers import (
    TINY,
    load_cfg,
    randomize_nonlocal_norms,
    run_train_net,
    training_input,
    training_records,
)

pytestmark = pytest.mark.detectron2

FLOAT16_MAX = 65504.0
SMALL_MODEL = [
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "64",
    "MODEL.RESNETS.NORM",
    "GN",
    "MODEL.FPN.NORM",
    "GN",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "200",
    "MODEL.FPN.OUT_CHANNELS",
    "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM",
    "64",
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS",
    "(64, 64, 64, 64, 64, 64, 64, 64)",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "256",
]
MODELS = {
    "mask_rcnn": ("mask_rcnn_R50_NL.yaml", []),
    "keypoint_rcnn": (
        "keypoint_rcnn_R101_NL_head_backbone.yaml",
        ["MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE", "0"],
    ),
}


def _nonlocal_blocks(model):
    from nonlocal_det.layers import NonLocalBlock2d

    return {name: m for name, m in model.named_modules() if isinstance(m, NonLocalBlock2d)}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_autocast_training_steps_stay_finite(model_name, dtype):
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    config, opts = MODELS[model_name]
    cfg = load_cfg(config, *SMALL_MODEL, *opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    randomize_nonlocal_norms(model, value=1.0)
    blocks = _nonlocal_blocks(model)
    with torch.no_grad():  # large embeddings: attention logits of ~1e5 and beyond
        for block in blocks.values():
            block.theta.weight.mul_(30)
            block.phi.weight.mul_(30)
    assert len(blocks) == (5 if model_name == "keypoint_rcnn" else 1)

    largest_logit, outputs = {}, {}

    def record(name):
        def hook(block, inputs, output):
            (x,) = inputs
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                q, k = block.theta(x.float()).flatten(2), block.phi(x.float()).flatten(2)
                if x.shape[0]:
                    largest_logit[name] = max(
                        largest_logit.get(name, 0.0),
                        torch.einsum("bdn,bdm->bnm", q, k).abs().max().item(),
                    )
            outputs[name] = output

        return hook

    for name, block in blocks.items():
        block.register_forward_hook(record(name))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    # Detectron2's AMPTrainer starts its GradScaler at 2**16 and halves it after each step whose
    # scaled gradients overflow (the steep attention here gives gradients of ~1e4, so that takes
    # ~14 skipped steps). Starting at 1 makes every step count: any overflow fails the test.
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0, enabled=dtype == torch.float16)
    # pixel values 40x beyond the 0-255 range (the GroupNorm backbone absorbs most of it; the
    # scaled theta and phi above are what push the attention logits out of float16 range)
    data = [training_input(num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES, seed=s) for s in (0, 1)]
    for sample in data:
        sample["image"] = sample["image"] * 40
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with EventStorage():
        for step in range(2):
            with torch.autocast("cpu", dtype=dtype):
                losses = model(data)
            total = sum(losses.values())
            assert all(torch.isfinite(v) for v in losses.values()), (step, losses)
            for name, y in outputs.items():
                assert torch.isfinite(y).all(), (step, name)
            optimizer.zero_grad()
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            for name, p in model.named_parameters():
                assert p.grad is None or torch.isfinite(p.grad).all(), (step, name)
            scaler.step(optimizer)
            scaler.update()
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
    for name in blocks:
        key = f"{name}.norm.weight"
        assert not torch.equal(before[key], dict(model.named_parameters())[key]), (
            f"{key} did not train"
        )
    # The attention logits are far outside float16's range: only a float32 softmax keeps them
    # finite.
    assert max(largest_logit.values()) > FLOAT16_MAX, largest_logit


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="SOLVER.AMP.ENABLED needs CUDA (Detectron2's AMPTrainer)"
)
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_train_net_amp_on_cuda(tmp_path, precision):
    from nonlocal_det.harness.data import synthetic

    synthetic.generate(str(tmp_path / "datasets" / "nonlocal_synthetic"), {"train": 6, "val": 2})
    out = tmp_path / "out"
    rc, log = run_train_net(
        tmp_path,
        *TINY,
        "MODEL.DEVICE",
        "cuda",
        "SOLVER.AMP.ENABLED",
        "True",
        "SOLVER.AMP.PRECISION",
        precision,
        "SOLVER.MAX_ITER",
        "5",
        "OUTPUT_DIR",
        str(out),
    )
    assert rc == 0, log[-3000:]
    records = training_records(out)
    assert records and all(torch.isfinite(torch.tensor(r["total_loss"])) for r in records)


@pytest.mark.slow
def test_amp_precision_must_be_a_half_type(tmp_path):
    from nonlocal_det.harness.data import synthetic

    synthetic.generate(str(tmp_path / "datasets" / "nonlocal_synthetic"), {"train": 2, "val": 1})
    rc, log = run_train_net(
        tmp_path,
        *TINY,
        "SOLVER.AMP.ENABLED",
        "True",
        "SOLVER.AMP.PRECISION",
        "float8",
        "SOLVER.MAX_ITER",
        "1",
        "OUTPUT_DIR",
        str(tmp_path / "o"),
    )
    assert rc != 0
    assert "SOLVER.AMP.PRECISION='float8' is not one of ('float16', 'bfloat16')" in log
    assert "Traceback" not in log
