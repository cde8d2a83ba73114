"""The tools under tools/ on tiny inputs (skipped without Detectron2)."""

import os
import sys

import cv2
import pytest
import torch

from helpers import REPO_ROOT, SHIPPED_CONFIGS

pytestmark = pytest.mark.detectron2

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))


def config_path(name):
    return os.path.join(REPO_ROOT, "configs", name)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three generated 192x256 images (and their annotations) in a folder."""
    from nonlocal_det.harness.data import synthetic

    root = tmp_path_factory.mktemp("images")
    synthetic.generate_split(str(root), "val", 3)
    return root / "val"


@pytest.mark.slow
@pytest.mark.parametrize("config", SHIPPED_CONFIGS)
def test_analyze_model_runs_on_every_shipped_config(config):
    import analyze_model

    r = analyze_model.analyze(config_path(config), 64, 96)
    assert r["params"] > 1e6 and r["flops"] > r["backbone_flops"] > 0


@pytest.mark.slow
def test_analyze_model_counts_one_block_as_its_formula():
    """NL - baseline FLOPs = the block's multiply-adds from its shapes: W_theta, W_phi, W_g, W_z
    (2 C^2 N), the two pairwise products (N M (C/2 + C/2)) and GroupNorm (5 C N); the RoI work
    is equal."""
    import analyze_model

    height, width = 128, 192  # divisible by 32: res4 is exactly (H/16, W/16)
    base = analyze_model.analyze(config_path("mask_rcnn_R50_baseline.yaml"), height, width)
    nl = analyze_model.analyze(config_path("mask_rcnn_R50_NL.yaml"), height, width)
    channels, n = 1024, (height // 16) * (width // 16)
    m = (height // 32) * (width // 32)
    expected = 2 * channels**2 * n + n * m * channels + 5 * channels * n
    assert nl["backbone_flops"] - base["backbone_flops"] == expected
    assert nl["flops"] - base["flops"] == expected
    inner = channels // 2
    expected_params = (
        4 * channels * inner + 3 * inner + 2 * channels
    )  # 1x1 convs, theta/phi/g biases, GN affine (W_z has no bias before a norm)
    assert nl["params"] - base["params"] == expected_params


@pytest.mark.slow
def test_analyze_model_overhead_table(tmp_path, capsys):
    import analyze_model

    out = tmp_path / "overhead.md"
    analyze_model.main(
        [
            "--overhead-table",
            "--size",
            "64",
            "96",
            "--output",
            str(out),
            "--pairs",
            "mask_rcnn_R50_baseline.yaml:mask_rcnn_R50_NL.yaml",
        ]
    )
    text = out.read_text()
    assert text.startswith("Input 64×96.")
    (row,) = [line for line in text.splitlines() if line.startswith("| `mask_rcnn_R50_NL.yaml`")]
    cells = [c.strip() for c in row.split("|")]
    assert cells[2] == "1"  # blocks added
    overhead = float(cells[5].rstrip("%"))
    assert overhead > 0 and cells[6] == ("yes" if overhead < 5 else "**no**")


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", ["quickstart.yaml", "mask_rcnn_R50_NL.yaml", "keypoint_rcnn_R101_NL_head.yaml"]
)
def test_demo_draws_every_image(images, tmp_path, config, capsys):
    import demo

    demo.main(
        [
            "--config-file",
            config_path(config),
            "--input",
            str(images),
            "--output",
            str(tmp_path),
            "--confidence-threshold",
            "0.0",
            "--random-weights",
            "INPUT.MIN_SIZE_TEST",
            "128",
            "MODEL.WEIGHTS",
            "",
        ]
    )
    for src in sorted(images.iterdir()):
        drawing = cv2.imread(str(tmp_path / src.name))
        assert drawing is not None and drawing.shape == cv2.imread(str(src)).shape
    assert capsys.readouterr().out.count("instances ->") == 3


@pytest.mark.slow
def test_demo_names_a_missing_input(tmp_path):
    import demo
    from nonlocal_det.errors import MissingInputError

    with pytest.raises(MissingInputError, match="nope.png.* neither an image file nor a folder"):
        demo.main(
            [
                "--config-file",
                config_path("quickstart.yaml"),
                "--input",
                str(tmp_path / "nope.png"),
                "--output",
                str(tmp_path),
            ]
        )


def test_top_keys_are_the_largest_entries_of_the_full_matrix():
    """visualize_attention's top-20 keys = the 20 largest weights of the reference N x M matrix."""
    import visualize_attention
    from nonlocal_det.layers import NonLocalBlock2d
    from reference import pairwise_matrix, reference_embed

    torch.manual_seed(0)
    block = NonLocalBlock2d(16, mode="embedded_gaussian", sub_sample=True).double()
    x = torch.randn(1, 16, 9, 11, dtype=torch.float64)
    queries = torch.tensor([[0, 0], [4, 5], [8, 10]])
    q_xy, k_xy, weights = visualize_attention.top_keys(block, x, queries, lambda rc: rc.flip(-1))
    full = pairwise_matrix(block, *reference_embed(block, x)[:2])[
        0
    ]  # (N, M), M = 5 x 6 pooled keys
    for i, (r, c) in enumerate(queries.tolist()):
        expected, index = full[r * 11 + c].topk(visualize_attention.TOP_K)
        torch.testing.assert_close(weights[i], expected)
        # key (u, v) pools rows 2u..2u+1 and cols 2v..2v+1: drawn at the centre of that cell
        torch.testing.assert_close(
            k_xy[i].double(),
            torch.stack([2 * (index % 6) + 0.5, 2 * (index // 6) + 0.5], -1).double(),
        )
    torch.testing.assert_close(q_xy.double(), queries.flip(-1).double())


# Random weights: GN keeps activations finite where FrozenBN with identity statistics would not.
@pytest.mark.slow
@pytest.mark.parametrize(
    "config,opts",
    [
        ("quickstart.yaml", []),
        (
            "keypoint_rcnn_R101_NL_head_backbone.yaml",
            ["MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN"],
        ),
    ],
)
def test_visualize_attention_writes_backbone_and_keypoint_head_pictures(
    images, tmp_path, config, opts, capsys
):
    import visualize_attention

    image = sorted(images.iterdir())[0]
    visualize_attention.main(
        [
            "--config-file",
            config_path(config),
            "--input",
            str(image),
            "--output",
            str(tmp_path),
            "--person-box",
            "40,30,120,150",
            "--random-weights",
            "INPUT.MIN_SIZE_TEST",
            "128",
            "MODEL.WEIGHTS",
            "",
            *opts,
        ]
    )
    written = sorted(p.name for p in tmp_path.iterdir())
    assert len(written) == 2, capsys.readouterr().out
    assert "_backbone_" in written[0] and "_keypoint_head_" in written[1]
    for name in written:
        assert cv2.imread(str(tmp_path / name)).shape == cv2.imread(str(image)).shape


@pytest.mark.slow
def test_visualize_attention_refuses_a_model_without_blocks(images, tmp_path):
    import visualize_attention
    from nonlocal_det.errors import ConfigError

    with pytest.raises(ConfigError, match="the model has no block of the non-local family"):
        visualize_attention.main(
            [
                "--config-file",
                config_path("mask_rcnn_R50_baseline.yaml"),
                "--input",
                str(sorted(images.iterdir())[0]),
                "--output",
                str(tmp_path),
                "--random-weights",
                "MODEL.WEIGHTS",
                "",
            ]
        )


@pytest.mark.slow
def test_tools_name_unreachable_weights(images, tmp_path):
    import demo
    from nonlocal_det.errors import MissingInputError

    with pytest.raises(MissingInputError, match="MODEL.WEIGHTS='/no/such/model.pth'"):
        demo.main(
            [
                "--config-file",
                config_path("quickstart.yaml"),
                "--input",
                str(images),
                "--output",
                str(tmp_path),
                "MODEL.WEIGHTS",
                "/no/such/model.pth",
            ]
        )


@pytest.mark.slow
def test_time_data_checks_builds_a_clean_coco_file_and_times_its_checks(tmp_path, capsys):
    """The timing tool's generated file must pass the checks it times (0 problems), or the time
    would be that of an error path; with --workdir its files stay for inspection."""
    import time_data_checks

    time_data_checks.main(["--images", "40", "--workdir", str(tmp_path)])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("40 images, 280 annotations, 0 problems:"), line
    assert len(os.listdir(tmp_path / "images")) == 40
