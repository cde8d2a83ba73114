#!/usr/bin/env python
"""
Train and evaluate configs over several seeds with train_net.py, then report (table and plot).

Each (config, seed) is one train_net.py process in <output-dir>/<config>/seed<seed>, not repeated
once finished. More examples: docs/tools.md, docs/ablation.md, docs/usage.md.

    python tools/run_seeds.py --config-files configs/longrange_baseline.yaml \
        configs/longrange_NL.yaml --seeds 0 1 2 --output-dir output/ablation \
        --summary-dir docs/ablation_runs --table output/ablation.md
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

from nonlocal_det.errors import MissingInputError, exit_on_user_error
from nonlocal_det.harness.cli import seed_runs
from nonlocal_det.harness.cli.args import non_negative_int, positive_int
from nonlocal_det.harness.cli.seed_report import add_report_arguments, write_report
from nonlocal_det.harness.io import write_json
from nonlocal_det.harness.utils.machine import cpu_model, git_commit
from nonlocal_det.harness.utils.tables import format_ap, format_duration

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO_ROOT, "train_net.py")
PAPER_RESULTS = os.path.join(REPO_ROOT, "tools", "paper_results.json")


class RunFailed(RuntimeError):
    """A train_net.py run that exited with an error; the message ends with its log's tail."""


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
    cmd = [sys.executable, TRAIN_NET, "--config-file", config_file, "--num-gpus", str(num_gpus)]
    cmd += [*opts, "SEED", str(seed), "OUTPUT_DIR", directory]
    log_path = os.path.join(directory, "train_net.log")
    start = time.time()
    with open(log_path, "w") as log:
        returncode = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    wall = time.time() - start
    with open(log_path) as f:
        log_text = f.read()
    if returncode != 0:
        tail = log_text[-2000:]
        raise RunFailed(f"{' '.join(cmd)} exited with {returncode}; end of its log:\n{tail}")
    in_repo = config_file.startswith(REPO_ROOT)
    run = {
        "config": os.path.relpath(config_file, REPO_ROOT) if in_repo else config_file,
        "seed": seed,
        "wall_s": round(wall, 1),
        "train_s": _training_seconds(log_text),
        "opts": opts,
        "num_gpus": num_gpus,
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": git_commit(REPO_ROOT),
    }
    write_json(os.path.join(directory, seed_runs.RUN_FILE), run, indent=1)
    return seed_runs.load_run(directory)


def summary_line(run: dict) -> str:
    metrics = run["metrics"]
    aps = [f"{label} {format_ap(metrics[t])}" for t, label in seed_runs.TASKS if t in metrics]
    return f"{', '.join(aps)}; {format_duration(run['wall_s'])}"


def sweep(
    config_files: List[str],
    seeds: List[int],
    output_dir: str,
    num_gpus: int,
    opts: List[str],
    summary_dir: Optional[str] = None,
) -> Dict[str, List[dict]]:
    """Every (config, seed) run, trained unless already done, and with ``summary_dir`` its summary
    written there as soon as it ends; {config file: [runs in seed order]}."""
    jobs = [(c, s) for c in config_files for s in seeds]
    results: Dict[str, List[dict]] = {c: [] for c in config_files}
    trained_walls = []
    for number, (config_file, seed) in enumerate(jobs, 1):
        directory = seed_runs.run_dir(output_dir, config_file, seed)
        prefix = f"[{number}/{len(jobs)}] {seed_runs.config_name(config_file)} seed {seed}"
        run = seed_runs.load_run(directory)
        if run is not None:
            print(f"{prefix}: done before ({summary_line(run)})", flush=True)
        else:
            log_path = os.path.join(directory, "train_net.log")
            print(f"{prefix}: training ... (log: {log_path})", flush=True)
            run = train_one(config_file, seed, directory, num_gpus, opts)
            trained_walls.append(run["wall_s"])
            todo = [seed_runs.run_dir(output_dir, c, s) for c, s in jobs[number:]]
            left = sum(seed_runs.load_run(d) is None for d in todo)
            mean_wall = statistics.mean(trained_walls)
            eta = f"; ETA {format_duration(mean_wall * left)} for {left} more" if left else ""
            print(f"{prefix}: {summary_line(run)}{eta}", flush=True)
        if summary_dir:
            seed_runs.write_summary(run, seed_runs.summary_path(summary_dir, config_file, seed))
        results[config_file].append(run)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    quickstart = os.path.join(REPO_ROOT, "configs", "quickstart.yaml")
    parser.add_argument("--config-files", nargs="+", default=[quickstart])
    parser.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0, 1, 2])
    parser.add_argument("--output-dir", default=os.path.join("output", "seeds"))
    gpus_help = "processes per run (train_net.py --num-gpus)"
    parser.add_argument("--num-gpus", type=positive_int, default=1, help=gpus_help)
    summary_help = "write each finished run's summary (run record, final metrics, loss points) to "
    summary_help += "SUMMARY_DIR/<config>/seed<seed>.json as soon as it ends"
    parser.add_argument("--summary-dir", help=summary_help)
    add_report_arguments(parser)
    opts_help = "config overrides for every run: KEY VALUE ..."
    parser.add_argument("opts", nargs=argparse.REMAINDER, help=opts_help)
    args = parser.parse_args(argv)
    config_files = [os.path.abspath(c) for c in args.config_files]
    for c in config_files:
        if not os.path.isfile(c):
            raise MissingInputError(f"--config-files: {c} does not exist")
    opts = list(args.opts)
    try:
        results = sweep(
            config_files, args.seeds, args.output_dir, args.num_gpus, opts, args.summary_dir
        )
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    command = "python tools/run_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(results, args, command, opts, PAPER_RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
