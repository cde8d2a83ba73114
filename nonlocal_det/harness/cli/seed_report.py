"""
The report of a seed sweep, from its runs (``seed_runs``): a table per config (a row per seed,
mean ± std, min, max, wall time, total), with several configs an ablation table (AP mean ± std and
per seed, train time, params and FLOPs), the papers' published numbers beside ours for configs that
are rows of their COCO tables, and a plot (AP per seed, training-loss curves).
"""

import argparse
import json
import os
import statistics
from typing import Dict, List, Optional

import numpy as np

from ..utils.tables import format_ap, format_duration, mean_std, write_text
from .seed_runs import TASKS, config_name, run_losses

__all__ = [
    "report",
    "plot",
    "seed_tables",
    "ablation_table",
    "paper_table",
    "add_report_arguments",
    "load_summaries",
    "write_report",
]


def _tasks_of(runs: List[dict]):
    return [(t, label) for t, label in TASKS if all(t in r["metrics"] for r in runs)]


def _columns(runs: List[dict], per_category=False):
    """
    [(label, run -> value)]: each task's AP, then with ``per_category`` the box AP of each
    category, and of each group {name: [categories]} of ``per_category`` as their mean.
    """
    columns = [(label, lambda r, t=t: r["metrics"][t]) for t, label in _tasks_of(runs)]
    if per_category and all("bbox" in r["all_metrics"] for r in runs):
        names = [k[3:] for k in runs[0]["all_metrics"]["bbox"] if k.startswith("AP-")]
        groups = per_category if isinstance(per_category, dict) else {}
        for group, members in groups.items():
            columns.append(
                (
                    f"box AP {group}",
                    lambda r, m=members: statistics.mean(
                        r["all_metrics"]["bbox"][f"AP-{c}"] for c in m
                    ),
                )
            )
        columns += [
            (f"box AP {name}", lambda r, k=name: r["all_metrics"]["bbox"][f"AP-{k}"])
            for name in names
        ]
    return columns


def _ap_statistic(statistic, values: List[Optional[float]]) -> str:
    """``statistic`` (mean_std, min or max) of the APs that are not None, as a table cell."""
    if statistic is mean_std:
        return mean_std(values)
    known = [v for v in values if v is not None]
    return format_ap(statistic(known) if known else None)


def seed_tables(results: Dict[str, List[dict]], per_category: bool = False) -> List[str]:
    """Per config: a row per seed, then mean ± std, min and max of every AP and the wall time."""
    lines = []
    for config_file, config_runs in results.items():
        columns = _columns(config_runs, per_category)
        lines += [f"### `{config_name(config_file)}` ({len(config_runs)} seeds)", ""]
        lines.append("| seed | " + " | ".join(label for label, _ in columns) + " | wall |")
        lines.append("|---" * (len(columns) + 2) + "|")
        for r in config_runs:
            aps = " | ".join(format_ap(value(r)) for _, value in columns)
            lines.append(f"| {r['seed']} | {aps} | {format_duration(r['wall_s'])} |")
        walls = [r["wall_s"] for r in config_runs]
        rows = (("mean ± std", mean_std, statistics.mean), ("min", min, min), ("max", max, max))
        for name, ap_stat, wall_stat in rows:
            cells = [
                _ap_statistic(ap_stat, [value(r) for r in config_runs]) for _, value in columns
            ]
            lines.append(
                f"| **{name}** | " + " | ".join(cells) + f" | {format_duration(wall_stat(walls))} |"
            )
        lines.append(f"\nTotal wall time: {format_duration(sum(walls))}.\n")
    return lines


def model_costs(config_file: str, opts: List[str]) -> dict:
    """
    Parameters and fvcore FLOPs on a MIN_SIZE_TEST x MAX_SIZE_TEST image (800x1333 for COCO
    configs; the generated datasets' images are exactly that size).
    """
    from ..analysis.model_costs import analysis_cfg, analyze

    cfg = analysis_cfg(config_file, opts)
    height, width = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    result = analyze(config_file, height, width, opts)
    return {"params": result["params"], "flops": result["flops"], "size": (height, width)}


def ablation_table(
    results: Dict[str, List[dict]], costs: Dict[str, dict], per_category: bool = False
) -> List[str]:
    """One row per config: AP mean ± std and per-seed values, train time, params, FLOPs overhead."""
    configs = list(results)
    columns = _columns([r for rs in results.values() for r in rs], per_category)
    base = costs.get(configs[0])
    header = "| config | seeds | " + " | ".join(
        f"{label} (mean ± std) | {label} per seed" for label, _ in columns
    )
    header += " | train time (mean) | params (M) | GFLOPs | FLOPs vs first |"
    lines = [header, "|---" * (3 + 2 * len(columns) + 3) + "|"]
    for config_file in configs:
        runs = results[config_file]
        cells = []
        for _, value in columns:
            values = [value(r) for r in runs]
            cells += [mean_std(values), ", ".join(format_ap(v) for v in values)]
        train = [r["train_s"] for r in runs if r.get("train_s") is not None]
        cost = costs.get(config_file)
        if cost:
            overhead = f"{100 * (cost['flops'] / base['flops'] - 1):+.2f}%" if base else "—"
            cost_cells = [f"{cost['params'] / 1e6:.2f}", f"{cost['flops'] / 1e9:.2f}", overhead]
        else:
            cost_cells = ["—", "—", "—"]
        lines.append(
            f"| `{config_name(config_file)}` | {', '.join(str(r['seed']) for r in runs)} | "
            + " | ".join(cells)
            + f" | {format_duration(statistics.mean(train) if train else None)} | "
            + " | ".join(cost_cells)
            + " |"
        )
    if costs and base:
        lines += [
            "",
            "GFLOPs: fvcore, one multiply-add = one flop, inference on a "
            f"{base['size'][0]}x{base['size'][1]} image.",
        ]
    return lines


def paper_table(results: Dict[str, List[dict]], opts: List[str], paper_results: str) -> List[str]:
    """
    The published numbers of configs that are rows of the papers' tables (``paper_results``, a
    JSON file: tools/paper_results.json), beside ours.
    """
    if not paper_results or not os.path.isfile(paper_results):
        return []
    with open(paper_results) as f:
        paper = json.load(f)
    rows = [
        (c, paper["rows"][os.path.basename(c)])
        for c in results
        if os.path.basename(c) in paper["rows"]
    ]
    if not rows:
        return []
    metrics = [
        (t, m) for t, _ in TASKS for m in ("AP", "AP50", "AP75") if any(t in row for _, row in rows)
    ]
    lines = [
        "Published numbers (papers, COCO val2017) beside ours. **Ours** are from the runs above"
        + (f", with overrides `{' '.join(opts)}`" if opts else "")
        + ": comparable to the paper only on COCO with the config's full schedule.",
        "",
        "| config | paper row | "
        + " | ".join(f"{t} {m} paper | {t} {m} ours" for t, m in metrics)
        + " |",
        "|---" * (2 + 2 * len(metrics)) + "|",
    ]
    for config_file, row in rows:
        cells = []
        for task, metric in metrics:
            ours = [
                r["all_metrics"][task][metric]
                for r in results[config_file]
                if task in r["all_metrics"]
            ]
            ours = [v for v in ours if v is not None]
            cells += [
                f"{row[task][metric]:.1f}" if metric in row.get(task, {}) else "",
                mean_std(ours) if ours else "—",
            ]
        lines.append(
            f"| `{os.path.basename(config_file)}` | {row['source']}: {row['row']} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", *(f"{key}: {text}" for key, text in paper["sources"].items())]
    return lines


def plot(results: Dict[str, List[dict]], path: str) -> None:
    """Left: AP of every seed for each config (one marker per task). Right: training-loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(results)
    tasks = _tasks_of([r for rs in results.values() for r in rs])
    fig, (ax_ap, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = {"bbox": "o", "segm": "s", "keypoints": "^"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, config_file in enumerate(configs):
        color = colors[i % len(colors)]
        for j, (task, label) in enumerate(tasks):
            values = [r["metrics"][task] for r in results[config_file]]
            values = [float("nan") if v is None else v for v in values]  # not drawn
            offset = (j - (len(tasks) - 1) / 2) * 0.12
            ax_ap.scatter(
                [i + offset] * len(values),
                values,
                color=color,
                marker=markers[task],
                label=label if i == 0 else None,
                zorder=3,
            )
            ax_ap.hlines(
                np.nanmean(values) if not np.isnan(values).all() else np.nan,
                i + offset - 0.05,
                i + offset + 0.05,
                color="black",
                zorder=4,
            )
        for r in results[config_file]:
            its, losses = run_losses(r)
            ax_loss.plot(
                its,
                losses,
                color=color,
                alpha=0.7,
                label=config_name(config_file) if r is results[config_file][0] else None,
            )
    ax_ap.set_xticks(range(len(configs)), [config_name(c) for c in configs], rotation=10)
    ax_ap.set_ylabel("AP (val)")
    ax_ap.set_title("AP per seed (bar: mean)")
    ax_ap.legend()
    ax_ap.grid(alpha=0.3)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("total training loss (median of 20 iterations)")
    ax_loss.set_title("training loss, every seed")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(
    results: Dict[str, List[dict]],
    command: str,
    opts: List[str],
    with_costs: bool,
    per_category=False,
    paper_results: str = None,
) -> str:
    runs = [r for rs in results.values() for r in rs]
    cpus = runs[0].get("logical_cpus")
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {runs[0]['cpu']}"
        + (f", {cpus} logical CPUs" if cpus else "")
        + ", OMP_NUM_THREADS="
        f"{runs[0].get('omp_num_threads') or 'unset'}; wall time per run is the whole train_net.py "
        "process (dataset generation when missing, training, evaluation); train time is "
        "Detectron2's "
        "total training time (iterations only).",
        "",
    ]
    if len(results) > 1:
        costs = {c: model_costs(c, opts) for c in results} if with_costs else {}
        lines += ["### Ablation", "", *ablation_table(results, costs, per_category), ""]
    comparison = paper_table(results, opts, paper_results)
    if comparison:
        lines += ["### Paper comparison", "", *comparison, ""]
    lines += seed_tables(results, per_category)
    return "\n".join(lines)


def _category_group(text: str):
    name, _, members = text.partition("=")
    if not name or not members:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=CATEGORY,CATEGORY,...")
    return name, members.split(",")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The report's options, shared by tools/run_seeds.py and tools/seeds_report.py."""
    parser.add_argument("--table", help="also write the markdown report to this file")
    parser.add_argument("--plot", help="write the AP-per-seed and training-loss plot to this PNG")
    parser.add_argument(
        "--per-category", action="store_true", help="also tabulate the box AP of every category"
    )
    parser.add_argument(
        "--category-mean",
        action="append",
        default=[],
        metavar="NAME=CAT1,CAT2",
        type=_category_group,
        help="with --per-category, also a column NAME: the mean box AP of these categories",
    )
    parser.add_argument(
        "--no-costs", action="store_true", help="leave params/FLOPs out of the ablation table"
    )


def load_summaries(summary_dir: str, config_files: List[str], seeds: List[int]):
    """{config file: [runs in seed order]} from the summaries; ConfigError naming a missing one."""
    from nonlocal_det.errors import ConfigError

    from .seed_runs import load_summary, summary_path

    results = {}
    for config_file in config_files:
        paths = [summary_path(summary_dir, config_file, seed) for seed in seeds]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise ConfigError(f"no summary {missing[0]}: that run has not been made (run_seeds.py)")
        results[config_file] = [load_summary(p) for p in paths]
    return results


def write_report(results, args, command: str, opts: List[str], paper_results: str) -> str:
    """The report of ``results`` printed, and written to ``args.table`` / ``args.plot``."""
    per_category = args.per_category and (dict(args.category_mean) or True)
    text = report(results, command, opts, not args.no_costs, per_category, paper_results)
    print(text)
    if args.table:
        write_text(args.table, text)
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return text
