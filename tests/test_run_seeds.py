"""tools/run_seeds.py (multi-seed runner, ablation table, plot, paper comparison) and
tools/attention_mass.py, on tiny runs of generated datasets."""

import json
import os
import re
import sys

import numpy as np
import pytest
import torch

from helpers import REPO_ROOT

pytestmark = pytest.mark.detectron2

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))

TINY_RUN = [
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.STEPS",
    "()",
    "SOLVER.WARMUP_ITERS",
    "1",
    "DATALOADER.NUM_WORKERS",
    "0",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
]


def config(name):
    return os.path.join(REPO_ROOT, "configs", name)


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory):
    """Both generated datasets, a few images each, under a DETECTRON2_DATASETS of their own."""
    from nonlocal_det.harness.data.generated import GENERATED_DATASETS, register_generated_datasets

    root = tmp_path_factory.mktemp("datasets")
    for dataset in GENERATED_DATASETS.values():
        dataset.generator.generate(str(root / dataset.directory), {"train": 4, "val": 2})
    previous = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    register_generated_datasets()
    yield root
    if previous is None:
        del os.environ["DETECTRON2_DATASETS"]
    else:
        os.environ["DETECTRON2_DATASETS"] = previous
    register_generated_datasets()


def _table_rows(text, first_cell):
    """The cells of markdown rows whose first cell is ``first_cell``."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells[1:])
    return rows


@pytest.mark.slow
def test_two_seeds_are_trained_tabulated_and_not_retrained(datasets_dir, tmp_path, capsys):
    import run_seeds

    table = tmp_path / "seeds.md"
    args = [
        "--config-files",
        config("quickstart.yaml"),
        "--seeds",
        "0",
        "1",
        "--output-dir",
        str(tmp_path / "runs"),
        "--table",
        str(table),
        "INPUT.MIN_SIZE_TRAIN",
        "(96,)",
        "INPUT.MAX_SIZE_TRAIN",
        "128",
        "INPUT.MIN_SIZE_TEST",
        "96",
        "INPUT.MAX_SIZE_TEST",
        "128",
        *TINY_RUN,
    ]
    assert run_seeds.main(args) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"\[1/2\] quickstart seed 0: box AP [\d.]+, mask AP [\d.]+, keypoint AP [\d.]+; \dm\d\ds; "
        r"ETA",
        out,
    )
    text = table.read_text()
    assert "keypoint AP" in text and "Machine:" in text
    for seed in ("0", "1"):
        (row,) = _table_rows(text, seed)
        assert len(row) == 4 and all(re.fullmatch(r"-?[\d.]+", c) for c in row[:3]), row
        run = json.loads(
            (tmp_path / "runs" / "quickstart" / f"seed{seed}" / "run.json").read_text()
        )
        assert run["seed"] == int(seed) and run["wall_s"] > 0
    (mean,) = _table_rows(text, "**mean ± std**")
    aps = {s: [float(c) for c in _table_rows(text, s)[0][:3]] for s in ("0", "1")}
    for column, cell in enumerate(mean[:3]):
        m, std = (float(v) for v in cell.split(" ± "))
        values = [aps["0"][column], aps["1"][column]]
        assert m == pytest.approx(np.mean(values), abs=0.051) and std == pytest.approx(
            np.std(values), abs=0.051
        )

    assert run_seeds.main(args) == 0  # resumed: nothing is trained again
    out = capsys.readouterr().out
    assert out.count("done before") == 2 and "training ..." not in out


@pytest.mark.slow
def test_ablation_of_two_configs_writes_table_and_plot(datasets_dir, tmp_path):
    import cv2

    import run_seeds

    table, plot = tmp_path / "ablation.md", tmp_path / "ablation.png"
    args = [
        "--config-files",
        config("longrange_baseline.yaml"),
        config("longrange_NL.yaml"),
        "--seeds",
        "0",
        "--output-dir",
        str(tmp_path / "runs"),
        "--table",
        str(table),
        "--plot",
        str(plot),
        *TINY_RUN,
    ]
    assert run_seeds.main(args) == 0
    text = table.read_text()
    assert "### Ablation" in text
    base, nl = _table_rows(text, "`longrange_baseline`"), _table_rows(text, "`longrange_NL`")
    assert len(base) == len(nl) == 1
    # seeds | box mean | box per seed | mask mean | mask per seed | train | params | GFLOPs |
    # overhead
    assert float(nl[0][-3]) > float(base[0][-3]) and float(nl[0][-2]) > float(base[0][-2])
    assert base[0][-1] == "+0.00%" and re.fullmatch(r"\+\d+\.\d\d%", nl[0][-1])
    image = cv2.imread(str(plot))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 400


@pytest.mark.slow
def test_paper_mode_prints_the_published_r50_rows_beside_ours(datasets_dir, tmp_path):
    import run_seeds

    table = tmp_path / "paper.md"
    tiny_coco = [
        "MODEL.WEIGHTS",
        "",
        "DATASETS.TRAIN",
        "('nonlocal_synthetic_train',)",
        "DATASETS.TEST",
        "('nonlocal_synthetic_val',)",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "4",
        "MODEL.RESNETS.DEPTH",
        "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        "64",
        "MODEL.RESNETS.NORM",
        "GN",
        "MODEL.FPN.NORM",
        "GN",
        "INPUT.MIN_SIZE_TRAIN",
        "(96,)",
        "INPUT.MAX_SIZE_TRAIN",
        "128",
        "INPUT.MIN_SIZE_TEST",
        "96",
        "INPUT.MAX_SIZE_TEST",
        "128",
        *TINY_RUN,
    ]
    args = [
        "--config-files",
        config("mask_rcnn_R50_baseline.yaml"),
        config("mask_rcnn_R50_NL.yaml"),
        "--seeds",
        "0",
        "--output-dir",
        str(tmp_path / "runs"),
        "--table",
        str(table),
        "--no-costs",
        *tiny_coco,
    ]
    assert run_seeds.main(args) == 0
    text = table.read_text()
    assert (
        "### Paper comparison" in text and "Ours** are from the runs above, with overrides" in text
    )
    (base,) = _table_rows(text, "`mask_rcnn_R50_baseline.yaml`")
    (nl,) = _table_rows(text, "`mask_rcnn_R50_NL.yaml`")
    assert base[0] == "NL: R50 baseline" and nl[0] == "NL: R50 +1 NL"
    # paper bbox AP, ours, paper AP50, ours, ...: the published values, and ours from the run
    assert (base[1], base[3], base[5]) == ("38.0", "59.6", "41.0") and (nl[1], nl[7]) == (
        "39.0",
        "35.5",
    )
    ours = json.loads(
        (tmp_path / "runs" / "mask_rcnn_R50_NL" / "seed0" / "final_metrics.json").read_text()
    )
    assert nl[2] == f"{ours['nonlocal_synthetic_val']['bbox']['AP']:.1f} ± 0.0"
    assert "Non-local Neural Networks" in text


def test_cue_cells_are_the_key_cells_under_the_lamp():
    from nonlocal_det.harness.analysis.attention import cue_and_query_cells

    # 4 x 8 grid of 16-px cells, 2x2 key cells of 32 px; lamp at x 8..40, y 0..32; a box over cells
    # (1..2, 5..6)
    queries, cue = cue_and_query_cells((8, 0, 40, 32), [(80, 16, 112, 48)], (4, 8), 16, 2)
    assert sorted(map(tuple, queries)) == [(1, 5), (1, 6), (2, 5), (2, 6)]
    expected = np.zeros((2, 4), bool)
    expected[0, 0] = expected[0, 1] = True
    assert np.array_equal(cue, expected)


@pytest.mark.slow
def test_uniform_attention_gives_a_ratio_of_one(datasets_dir, tmp_path):
    """With theta = 0 every logit is 0: each query spreads its weight evenly, so the lamp gets
    exactly its share of the keys."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from nonlocal_det.harness.analysis.attention import measure_attention
    from nonlocal_det.harness.config import get_nonlocal_cfg
    from nonlocal_det.layers import NonLocalBlock2d

    cfg = get_nonlocal_cfg(config("longrange_NL.yaml"), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    blocks = [m for m in model.backbone.modules() if isinstance(m, NonLocalBlock2d)]
    assert len(blocks) == 1
    with torch.no_grad():
        blocks[0].theta.weight.zero_()
        blocks[0].theta.bias.zero_()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("uniform")
    cfg.MODEL.WEIGHTS = str(tmp_path / "uniform.pth")
    result = measure_attention(cfg)
    lamp = result["lamp"]
    assert result["images"] >= 1 and lamp["queries"] > 0
    assert lamp["ratio"] == pytest.approx(1.0, abs=1e-5)
    assert 0 < lamp["uniform"] < 0.2
    (block,) = result["blocks"].values()
    assert block["specificity"] == pytest.approx(0.0, abs=1e-9)  # every query's map is the same
    assert block["specificity_at_init"] > 0.01


@pytest.mark.slow
def test_partner_mass_of_gc_blocks_is_that_of_any_other_lamp(datasets_dir):
    """On the pairs task a GC block's pooling is one map per image: a shape's own lamp gets what
    every other lamp gets, in every block (random weights; the measure, not a training run)."""
    from nonlocal_det.harness.analysis.attention import measure_attention
    from nonlocal_det.harness.config import get_nonlocal_cfg

    cfg = get_nonlocal_cfg(config("pairs_GC.yaml"), ["MODEL.DEVICE", "cpu"])
    result = measure_attention(cfg, random_ok=True)
    assert len(result["partner_by_block"]) == 6  # every residual block of res3-res5 of R18
    for partner in result["partner_by_block"].values():
        assert partner["queries"] > 0 and partner["other_lamps"] == 3
        assert partner["ratio"] == pytest.approx(1.0, abs=1e-9)


BLOCKS = ("baseline", "NL", "GC", "DNL")  # an ablation's configs: <task>_<block>.yaml


def report_args(task, team_categories, seeds):
    """tools/seeds_report.py's arguments for a task's committed table (without its outputs)."""
    return [
        os.path.join(REPO_ROOT, "docs", "ablation_runs"),
        "--config-files",
        *(config(f"{task}_{block}.yaml") for block in BLOCKS),
        "--seeds",
        *seeds,
        "--no-costs",
        "--per-category",
        "--category-mean",
        f"team={team_categories}",
    ]


ABLATION_REPORT = report_args("longrange", "team_red,team_green", ["0", "1", "2"])
# the seeds whose four runs are committed
PAIRS_REPORT = report_args("pairs", "team_solid,team_hollow", ["0"])


@pytest.mark.parametrize(
    "committed_table, report",
    [("ablation_table.md", ABLATION_REPORT), ("ablation_table_pairs.md", PAIRS_REPORT)],
)
def test_committed_ablation_table_is_rebuilt_from_the_committed_run_summaries(
    tmp_path, committed_table, report
):
    """docs/ablation_table*.md come from docs/ablation_runs/ alone: nothing is retrained."""
    import seeds_report

    table, plot = tmp_path / "table.md", tmp_path / "ablation.png"
    assert seeds_report.main([*report, "--table", str(table), "--plot", str(plot)]) == 0

    def rows(text):
        return [line for line in text.splitlines() if line.startswith("|")]

    committed = open(os.path.join(REPO_ROOT, "docs", committed_table)).read()
    assert rows(table.read_text()) == rows(committed) and len(rows(committed)) > 10
    assert plot.stat().st_size > 10_000


def test_report_names_a_missing_summary(tmp_path, capsys):
    import seeds_report

    seeds = ABLATION_REPORT.index("--seeds")
    args = [*ABLATION_REPORT[: seeds + 2], "7", *ABLATION_REPORT[seeds + 3 :]]  # never run
    from nonlocal_det.errors import ConfigError

    with pytest.raises(ConfigError, match="no summary .*seed7.json"):
        seeds_report.main(args)


def test_an_ap_coco_could_not_compute_is_shown_and_left_out_of_the_mean():
    """A run without a detection has AP None (NaN in COCOeval): '—', and the mean of the others."""
    import statistics

    from nonlocal_det.harness.utils.tables import format_ap, mean_std

    values = [70.0, None, 73.0]
    expected = f"{statistics.mean([70, 73]):.1f} ± {statistics.pstdev([70, 73]):.1f}"
    assert mean_std(values) == f"{expected} (2 of 3 runs)"
    assert mean_std([None, None]) == "—" and format_ap(None) == "—" and format_ap(71.25) == "71.2"


def _flat_config(name):
    from detectron2.evaluation.testing import flatten_results_dict

    from nonlocal_det.harness.config import get_nonlocal_cfg

    return flatten_results_dict(get_nonlocal_cfg(config(name), []))  # keys "MODEL/NONLOCAL/..."


@pytest.mark.parametrize("task", ["longrange", "pairs"])
def test_an_ablations_configs_differ_from_its_baseline_only_in_the_block(task):
    base = _flat_config(f"{task}_baseline.yaml")
    for block in BLOCKS[1:]:
        cfg = _flat_config(f"{task}_{block}.yaml")
        assert cfg.keys() == base.keys()
        changed = {k for k in cfg if cfg[k] != base[k]} - {"OUTPUT_DIR", "MODEL/BACKBONE/NAME"}
        assert changed and all(k.startswith("MODEL/NONLOCAL/") for k in changed), (block, changed)


def test_the_pairs_configs_are_the_long_range_ones_with_the_data_swapped():
    for block in BLOCKS:
        longrange = _flat_config(f"longrange_{block}.yaml")
        pairs = _flat_config(f"pairs_{block}.yaml")
        changed = {k for k in pairs if pairs[k] != longrange[k]}
        assert changed == {"DATASETS/TRAIN", "DATASETS/TEST", "OUTPUT_DIR"}, block
