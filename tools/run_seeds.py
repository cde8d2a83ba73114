#!/usr/bin/env python
"""
Train and evaluate configs over several seeds with train_net.py; tabulate and plot the results.

Each (config, seed) is one ``train_net.py`` process (Detectron2's trainer and COCOEvaluator)
with ``SEED <seed> OUTPUT_DIR <output-dir>/<config>/seed<seed>`` and the given overrides. A run
whose ``final_metrics.json`` and ``run.json`` exist is not repeated, so an interrupted sweep
resumes where it stopped. A progress line with an ETA follows every run. At the end:

- per config, a row per seed and mean ± std (population std over the seeds run), min and max of
  box / mask / keypoint AP and wall time;
- with several configs, an ablation table: AP mean ± std and per-seed values, training time,
  parameters, GFLOPs (fvcore, at the config's test size) and the overhead over the first config;
- for configs that are rows of the papers' COCO tables (``tools/paper_results.json``), the
  published numbers beside ours;
- with ``--plot``, a PNG: AP per seed for each config, and the training-loss curves.

    python tools/run_seeds.py --config-files configs/quickstart.yaml --seeds 0 1 2 3 4 \
        --output-dir output/seeds --table docs/quickstart_seeds.md
    python tools/run_seeds.py --config-files configs/longrange_baseline.yaml configs/longrange_NL.yaml \
        --seeds 0 1 2 --output-dir output/ablation --table docs/ablation_table.md --plot docs/images/ablation.png
    python tools/run_seeds.py --config-files configs/mask_rcnn_R50_baseline.yaml configs/mask_rcnn_R50_NL.yaml \
        --seeds 0 --num-gpus 8 --output-dir output/coco_r50     # the paper's R50 rows, on COCO
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO_ROOT, "train_net.py")
PAPER_RESULTS = os.path.join(REPO_ROOT, "tools", "paper_results.json")
RUN_FILE = "run.json"
METRICS_FILE = "final_metrics.json"  # written by train_net.py
TASKS = (("bbox", "box AP"), ("segm", "mask AP"), ("keypoints", "keypoint AP"))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config_name(config_file: str) -> str:
    return os.path.splitext(os.path.basename(config_file))[0]


def run_dir(output_dir: str, config_file: str, seed: int) -> str:
    return os.path.join(output_dir, config_name(config_file), f"seed{seed}")


def load_run(directory: str) -> Optional[dict]:
    """
    The finished run in ``directory``: run.json's fields plus "metrics" {task: AP} and
    "all_metrics" {task: {metric: value}} of the first test set. None if not finished.
    """
    paths = [os.path.join(directory, name) for name in (RUN_FILE, METRICS_FILE)]
    if not all(os.path.isfile(p) for p in paths):
        return None
    with open(paths[0]) as f:
        run = json.load(f)
    with open(paths[1]) as f:
        per_dataset = json.load(f)
    tasks = next(iter(per_dataset.values()))
    run["all_metrics"] = tasks
    run["metrics"] = {task: tasks[task]["AP"] for task, _ in TASKS if task in tasks}
    run["directory"] = directory
    return run


def _training_seconds(log_text: str) -> Optional[float]:
    """Detectron2's 'Total training time: H:MM:SS' (training iterations only), in seconds."""
    match = re.search(r"Total training time: (\d+):(\d\d):(\d\d)", log_text)
    if not match:
        return None
    h, m, s = (int(g) for g in match.groups())
    return float(3600 * h + 60 * m + s)


def train_one(config_file: str, seed: int, directory: str, num_gpus: int, opts: List[str]) -> dict:
    """One train_net.py process; its output goes to ``directory/train_net.log``."""
    os.makedirs(directory, exist_ok=True)
    cmd = [sys.executable, TRAIN_NET, "--config-file", config_file, "--num-gpus", str(num_gpus),
           *opts, "SEED", str(seed), "OUTPUT_DIR", directory]  # fmt: skip
    log_path = os.path.join(directory, "train_net.log")
    start = time.time()
    with open(log_path, "w") as log:
        returncode = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    wall = time.time() - start
    with open(log_path) as f:
        log_text = f.read()
    if returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited with {returncode}; end of its log:\n{log_text[-2000:]}"
        )
    run = {
        "config": os.path.relpath(config_file, REPO_ROOT)
        if config_file.startswith(REPO_ROOT)
        else config_file,
        "seed": seed,
        "wall_s": round(wall, 1),
        "train_s": _training_seconds(log_text),
        "opts": opts,
        "num_gpus": num_gpus,
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": git_commit(),
    }
    with open(os.path.join(directory, RUN_FILE), "w") as f:
        json.dump(run, f, indent=1)
    return load_run(directory)


def git_commit() -> Optional[str]:
    """The checked-out commit of the code that trains, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def summary_path(summary_dir: str, config_file: str, seed: int) -> str:
    return os.path.join(summary_dir, config_name(config_file), f"seed{seed}.json")


def write_summary(run: dict, path: str) -> None:
    """
    A finished run as one small JSON file (no checkpoint): its run record, final metrics and the
    training-loss points. ``load_summary`` reads it back as the run it came from.
    """
    its, losses = training_losses(run["directory"])
    with open(os.path.join(run["directory"], METRICS_FILE)) as f:
        final_metrics = json.load(f)
    record = {k: v for k, v in run.items() if k not in ("metrics", "all_metrics", "directory")}
    summary = {
        "run": record,
        "final_metrics": final_metrics,
        "loss": {"iteration": its, "total_loss": losses},
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, path)


def load_summary(path: str) -> dict:
    """The run a ``write_summary`` file records, in ``load_run``'s shape plus "loss"."""
    with open(path) as f:
        summary = json.load(f)
    run = dict(summary["run"])
    tasks = next(iter(summary["final_metrics"].values()))
    run["all_metrics"] = tasks
    run["metrics"] = {task: tasks[task]["AP"] for task, _ in TASKS if task in tasks}
    run["directory"] = None
    run["loss"] = summary["loss"]
    return run


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def summary_line(run: dict) -> str:
    aps = ", ".join(
        f"{label} {run['metrics'][task]:.1f}" for task, label in TASKS if task in run["metrics"]
    )
    return f"{aps}; {format_duration(run['wall_s'])}"


def sweep(
    config_files: List[str],
    seeds: List[int],
    output_dir: str,
    num_gpus: int,
    opts: List[str],
    summary_dir: Optional[str] = None,
) -> Dict[str, List[dict]]:
    """
    Every (config, seed) run, trained unless already done; {config file: [runs in seed order]}.
    With ``summary_dir``, each finished run's summary (``write_summary``) is written there as
    soon as it ends.
    """
    jobs = [(c, s) for c in config_files for s in seeds]
    results: Dict[str, List[dict]] = {c: [] for c in config_files}
    trained_walls = []
    for number, (config_file, seed) in enumerate(jobs, 1):
        directory = run_dir(output_dir, config_file, seed)
        prefix = f"[{number}/{len(jobs)}] {config_name(config_file)} seed {seed}"
        run = load_run(directory)
        if run is not None:
            print(f"{prefix}: done before ({summary_line(run)})", flush=True)
        else:
            print(
                f"{prefix}: training ... (log: {os.path.join(directory, 'train_net.log')})",
                flush=True,
            )
            run = train_one(config_file, seed, directory, num_gpus, opts)
            trained_walls.append(run["wall_s"])
            left = sum(load_run(run_dir(output_dir, c, s)) is None for c, s in jobs[number:])
            eta = (
                f"; ETA {format_duration(statistics.mean(trained_walls) * left)} for {left} more"
                if left
                else ""
            )
            print(f"{prefix}: {summary_line(run)}{eta}", flush=True)
        if summary_dir:
            write_summary(run, summary_path(summary_dir, config_file, seed))
        results[config_file].append(run)
    return results


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


def _mean_std(values: List[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}"


def seed_tables(results: Dict[str, List[dict]], per_category: bool = False) -> List[str]:
    """Per config: a row per seed, then mean ± std, min and max of every AP and the wall time."""
    lines = []
    for config_file, config_runs in results.items():
        columns = _columns(config_runs, per_category)
        lines += [f"### `{config_name(config_file)}` ({len(config_runs)} seeds)", ""]
        lines.append("| seed | " + " | ".join(label for label, _ in columns) + " | wall |")
        lines.append("|---" * (len(columns) + 2) + "|")
        for r in config_runs:
            aps = " | ".join(f"{value(r):.1f}" for _, value in columns)
            lines.append(f"| {r['seed']} | {aps} | {format_duration(r['wall_s'])} |")
        walls = [r["wall_s"] for r in config_runs]
        rows = (("mean ± std", _mean_std, statistics.mean), ("min", min, min), ("max", max, max))
        for name, ap_stat, wall_stat in rows:
            cells = [ap_stat([value(r) for r in config_runs]) for _, value in columns]
            cells = [c if isinstance(c, str) else f"{c:.1f}" for c in cells]
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
    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    import analyze_model

    cfg = analyze_model.load_cfg(config_file, opts)
    height, width = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    result = analyze_model.analyze(config_file, height, width, opts)
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
            cells += [_mean_std(values), ", ".join(f"{v:.1f}" for v in values)]
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
            f"GFLOPs: fvcore, one multiply-add = one flop, inference on a {base['size'][0]}x{base['size'][1]} image.",
        ]
    return lines


def paper_table(results: Dict[str, List[dict]], opts: List[str]) -> List[str]:
    """The published numbers of configs that are rows of the papers' tables, beside ours."""
    with open(PAPER_RESULTS) as f:
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
                f"{row[task][metric]:.1f}" if task in row else "",
                _mean_std(ours) if ours else "—",
            ]
        lines.append(
            f"| `{os.path.basename(config_file)}` | {row['source']}: {row['row']} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", *(f"{key}: {text}" for key, text in paper["sources"].items())]
    return lines


def run_losses(run: dict):
    """(iterations, total_loss) of a run: from its summary, or from its directory's metrics.json."""
    if run.get("loss"):
        return run["loss"]["iteration"], run["loss"]["total_loss"]
    return training_losses(run["directory"])


def training_losses(directory: str):
    """(iterations, total_loss) from a run's metrics.json."""
    its, losses = [], []
    path = os.path.join(directory, "metrics.json")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line) if line.strip() else {}
                if "total_loss" in record:
                    its.append(record["iteration"])
                    losses.append(record["total_loss"])
    return its, losses


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
            offset = (j - (len(tasks) - 1) / 2) * 0.12
            ax_ap.scatter([i + offset] * len(values), values, color=color, marker=markers[task],
                          label=label if i == 0 else None, zorder=3)  # fmt: skip
            ax_ap.hlines(
                statistics.mean(values),
                i + offset - 0.05,
                i + offset + 0.05,
                color="black",
                zorder=4,
            )
        for r in results[config_file]:
            its, losses = run_losses(r)
            ax_loss.plot(its, losses, color=color, alpha=0.7,
                         label=config_name(config_file) if r is results[config_file][0] else None)  # fmt: skip
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
    per_category: bool = False,
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
        "process (dataset generation when missing, training, evaluation); train time is Detectron2's "
        "total training time (iterations only).",
        "",
    ]
    if len(results) > 1:
        costs = {c: model_costs(c, opts) for c in results} if with_costs else {}
        lines += ["### Ablation", "", *ablation_table(results, costs, per_category), ""]
    comparison = paper_table(results, opts)
    if comparison:
        lines += ["### Paper comparison", "", *comparison, ""]
    lines += seed_tables(results, per_category)
    return "\n".join(lines)


def _category_group(text: str):
    name, _, members = text.partition("=")
    if not name or not members:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=CATEGORY,CATEGORY,...")
    return name, members.split(",")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config-files", nargs="+", default=[os.path.join(REPO_ROOT, "configs", "quickstart.yaml")]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output-dir", default=os.path.join("output", "seeds"))
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="processes per run (train_net.py --num-gpus)"
    )
    parser.add_argument("--table", help="also write the markdown report to this file")
    parser.add_argument(
        "--summary-dir",
        help="write each finished run's summary (run record, final metrics, loss points) to "
        "SUMMARY_DIR/<config>/seed<seed>.json as soon as it ends",
    )
    parser.add_argument(
        "--from-summaries",
        metavar="SUMMARY_DIR",
        help="train nothing: build the table and plot from the summaries in SUMMARY_DIR",
    )
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
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides for every run: KEY VALUE ..."
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config_files = [os.path.abspath(c) for c in args.config_files]
    for c in config_files:
        if not os.path.isfile(c):
            sys.exit(f"error: --config-files: {c} does not exist")
    if args.from_summaries:
        results = {}
        for c in config_files:
            paths = [summary_path(args.from_summaries, c, seed) for seed in args.seeds]
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                sys.exit(
                    f"error: --from-summaries: no summary {missing[0]} (train it without --from-summaries)"
                )
            results[c] = [load_summary(p) for p in paths]
    else:
        try:
            results = sweep(
                config_files,
                args.seeds,
                args.output_dir,
                args.num_gpus,
                list(args.opts),
                args.summary_dir,
            )
        except RuntimeError as e:
            sys.exit(f"error: {e}")
    command = "python tools/run_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv)
    per_category = args.per_category and (dict(args.category_mean) or True)
    text = report(results, command, list(args.opts), not args.no_costs, per_category=per_category)
    print(text)
    if args.table:
        os.makedirs(os.path.dirname(os.path.abspath(args.table)), exist_ok=True)
        with open(args.table, "w") as f:
            f.write(text + "\n")
        print(f"Report written to {args.table}")
    if args.plot:
        plot(results, args.plot)
        print(f"Plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
