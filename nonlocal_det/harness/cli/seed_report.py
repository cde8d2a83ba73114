"""
The report of a seed sweep from its runs (``seed_runs``): a table per config, with several configs
an ablation table, the papers' published numbers beside ours where they apply, and a plot.
"""

import argparse
import json
import os
import statistics
from typing import Dict, List, Optional

import numpy as np

from nonlocal_det.errors import ConfigError

from ..utils.tables import format_ap, format_duration, markdown_table, mean_std, write_text
from .seed_runs import TASKS, config_name, load_summary, run_losses, summary_path

Results = Dict[str, List[dict]]  # {config file: [runs in seed order]}


def _tasks_of(runs: List[dict]):
    return [(t, label) for t, label in TASKS if all(t in r["metrics"] for r in runs)]


def _box_ap(run: dict, category: str) -> Optional[float]:
    return run["all_metrics"]["bbox"][f"AP-{category}"]


def _columns(runs: List[dict], per_category=False):
    """[(label, run -> value)]: each task's AP, then with ``per_category`` the mean box AP of each
    group {name: [categories]} of ``per_category``, and the box AP of each category."""
    columns = [(label, lambda r, t=t: r["metrics"][t]) for t, label in _tasks_of(runs)]
    if per_category and all("bbox" in r["all_metrics"] for r in runs):
        names = [k[3:] for k in runs[0]["all_metrics"]["bbox"] if k.startswith("AP-")]
        groups = per_category if isinstance(per_category, dict) else {}
        columns += [
            (f"box AP {group}", lambda r, m=members: statistics.mean(_box_ap(r, c) for c in m))
            for group, members in groups.items()
        ]
        columns += [(f"box AP {name}", lambda r, c=name: _box_ap(r, c)) for name in names]
    return columns


def seed_tables(results: Results, per_category: bool = False) -> List[str]:
    """Per config: a row per seed, then mean ± std, min and max of every AP and the wall time."""
    lines = []
    for config_file, runs in results.items():
        columns = _columns(runs, per_category)
        values = [[value(r) for r in runs] for _, value in columns]
        walls = [r["wall_s"] for r in runs]
        rows = [
            [r["seed"], *map(format_ap, aps), format_duration(r["wall_s"])]
            for r, *aps in zip(runs, *values)
        ]
        mean_wall = format_duration(statistics.mean(walls))
        rows.append(["**mean ± std**", *map(mean_std, values), mean_wall])
        known = [[v for v in vs if v is not None] for vs in values]  # the APs COCO could compute
        for name, statistic in (("min", min), ("max", max)):
            aps = [format_ap(statistic(k) if k else None) for k in known]
            rows.append([f"**{name}**", *aps, format_duration(statistic(walls))])
        lines += [f"### `{config_name(config_file)}` ({len(runs)} seeds)", ""]
        lines += markdown_table(["seed", *(label for label, _ in columns), "wall"], rows)
        lines.append(f"\nTotal wall time: {format_duration(sum(walls))}.\n")
    return lines


def model_costs(config_file: str, opts: List[str]) -> dict:
    """Parameters and fvcore FLOPs on a MIN_SIZE_TEST x MAX_SIZE_TEST image (800x1333 for COCO
    configs; the generated datasets' images are exactly that size)."""
    from ..analysis.model_costs import analysis_cfg, analyze

    cfg = analysis_cfg(config_file, opts)
    height, width = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    result = analyze(config_file, height, width, opts)
    return {"params": result["params"], "flops": result["flops"], "size": (height, width)}


def ablation_table(results: Results, costs: Dict[str, dict], per_category=False) -> List[str]:
    """One row per config: AP mean ± std and per-seed values, train time, params, FLOPs overhead."""
    columns = _columns([r for rs in results.values() for r in rs], per_category)
    base = costs.get(next(iter(results)))
    header = ["config", "seeds"]
    header += [f"{label} {s}" for label, _ in columns for s in ("(mean ± std)", "per seed")]
    header += ["train time (mean)", "params (M)", "GFLOPs", "FLOPs vs first"]
    rows = []
    for config_file, runs in results.items():
        row = [f"`{config_name(config_file)}`", ", ".join(str(r["seed"]) for r in runs)]
        for _, value in columns:
            values = [value(r) for r in runs]
            row += [mean_std(values), ", ".join(format_ap(v) for v in values)]
        train = [r["train_s"] for r in runs if r.get("train_s") is not None]
        row.append(format_duration(statistics.mean(train) if train else None))
        cost = costs.get(config_file)
        if cost:
            overhead = f"{100 * (cost['flops'] / base['flops'] - 1):+.2f}%" if base else "—"
            row += [f"{cost['params'] / 1e6:.2f}", f"{cost['flops'] / 1e9:.2f}", overhead]
        else:
            row += ["—", "—", "—"]
        rows.append(row)
    lines = markdown_table(header, rows)
    if costs and base:
        size = f"{base['size'][0]}x{base['size'][1]}"
        lines += ["", f"GFLOPs: fvcore, one multiply-add = one flop, inference on a {size} image."]
    return lines


def paper_table(results: Results, opts: List[str], paper_results: str) -> List[str]:
    """The published numbers of configs that are rows of the papers' tables (``paper_results``, a
    JSON file: tools/paper_results.json), beside ours."""
    if not paper_results or not os.path.isfile(paper_results):
        return []
    with open(paper_results) as f:
        paper = json.load(f)
    names = {c: os.path.basename(c) for c in results}
    rows = [(c, paper["rows"][name]) for c, name in names.items() if name in paper["rows"]]
    if not rows:
        return []
    tasks = [t for t, _ in TASKS if any(t in row for _, row in rows)]
    metrics = [(t, m) for t in tasks for m in ("AP", "AP50", "AP75")]
    table = []
    for config_file, row in rows:
        cells = [f"`{names[config_file]}`", f"{row['source']}: {row['row']}"]
        measured = [r["all_metrics"] for r in results[config_file]]
        for task, metric in metrics:
            ours = [m[task][metric] for m in measured if task in m and m[task][metric] is not None]
            published = f"{row[task][metric]:.1f}" if metric in row.get(task, {}) else ""
            cells += [published, mean_std(ours) if ours else "—"]
        table.append(cells)
    header = [f"{t} {m} {source}" for t, m in metrics for source in ("paper", "ours")]
    overrides = f", with overrides `{' '.join(opts)}`" if opts else ""
    return [
        f"Published numbers (papers, COCO val2017) beside ours. **Ours** are from the runs above"
        f"{overrides}: comparable to the paper only on COCO with the config's full schedule.",
        "",
        *markdown_table(["config", "paper row", *header], table),
        "",
        *(f"{key}: {text}" for key, text in paper["sources"].items()),
    ]


def plot(results: Results, path: str) -> None:
    """Left: AP of every seed for each config (one marker per task). Right: training-loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = _tasks_of([r for rs in results.values() for r in rs])
    fig, (ax_ap, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = {"bbox": "o", "segm": "s", "keypoints": "^"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, config_file in enumerate(results):
        color, runs = colors[i % len(colors)], results[config_file]
        for j, (task, label) in enumerate(tasks):
            values = [r["metrics"][task] for r in runs]
            values = [float("nan") if v is None else v for v in values]  # not drawn
            x = i + (j - (len(tasks) - 1) / 2) * 0.12  # the tasks side by side
            shown = label if i == 0 else None
            xs = [x] * len(values)
            ax_ap.scatter(xs, values, color=color, marker=markers[task], label=shown, zorder=3)
            mean = np.nanmean(values) if not np.isnan(values).all() else np.nan
            ax_ap.hlines(mean, x - 0.05, x + 0.05, color="black", zorder=4)
        for r in runs:
            shown = config_name(config_file) if r is runs[0] else None
            ax_loss.plot(*run_losses(r), color=color, alpha=0.7, label=shown)
    ax_ap.set_xticks(range(len(results)), [config_name(c) for c in results], rotation=10)
    ax_ap.set(ylabel="AP (val)", title="AP per seed (bar: mean)")
    ax_loss.set(xlabel="iteration", ylabel="total training loss (median of 20 iterations)")
    ax_loss.set_title("training loss, every seed")
    for ax in (ax_ap, ax_loss):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def load_summaries(summary_dir: str, config_files: List[str], seeds: List[int]) -> Results:
    """{config file: [runs in seed order]} from the summaries; ConfigError naming a missing one."""
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
    first = [r for rs in results.values() for r in rs][0]
    cpus = f", {first['logical_cpus']} logical CPUs" if first.get("logical_cpus") else ""
    omp = first.get("omp_num_threads") or "unset"
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {first['cpu']}{cpus}, OMP_NUM_THREADS={omp}; wall time per run is the whole "
        "train_net.py process (dataset generation when missing, training, evaluation); train time "
        "is Detectron2's total training time (iterations only).",
        "",
    ]
    if len(results) > 1:
        costs = {} if args.no_costs else {c: model_costs(c, opts) for c in results}
        lines += ["### Ablation", "", *ablation_table(results, costs, per_category), ""]
    comparison = paper_table(results, opts, paper_results)
    if comparison:
        lines += ["### Paper comparison", "", *comparison, ""]
    text = "\n".join(lines + seed_tables(results, per_category))
    print(text)
    if args.table:
        write_text(args.table, text)
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return text
