#!/usr/bin/env python
"""
Train and evaluate configs over several seeds with train_net.py, and tabulate the results.

Each (config, seed) is one ``train_net.py`` process (Detectron2's trainer and COCOEvaluator),
``SEED <seed> OUTPUT_DIR <output-dir>/<config>/seed<seed>`` plus the given overrides. A run whose
``final_metrics.json`` and ``run.json`` exist is not repeated, so an interrupted sweep resumes
where it stopped. A progress line follows every run; at the end a markdown table gives per seed
and as mean ± std (population std over the seeds run), min and max: box / mask / keypoint AP
and wall time.

    python tools/run_seeds.py --config-files configs/quickstart.yaml --seeds 0 1 2 3 4 \
        --output-dir output/seeds --table docs/quickstart_seeds.md
    python tools/run_seeds.py --config-files A.yaml B.yaml --seeds 0 1 --num-gpus 8 SOLVER.MAX_ITER 1000
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO_ROOT, "train_net.py")
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
    """The finished run in ``directory`` ({seed, wall_s, ..., "metrics": {task: AP}}), or None."""
    paths = [os.path.join(directory, name) for name in (RUN_FILE, METRICS_FILE)]
    if not all(os.path.isfile(p) for p in paths):
        return None
    with open(paths[0]) as f:
        run = json.load(f)
    with open(paths[1]) as f:
        per_dataset = json.load(f)
    # One test set per config here; with several, the first one's numbers are tabulated.
    tasks = next(iter(per_dataset.values()))
    run["metrics"] = {task: tasks[task]["AP"] for task, _ in TASKS if task in tasks}
    return run


def train_one(config_file: str, seed: int, directory: str, num_gpus: int, opts: List[str]) -> dict:
    """One train_net.py process; its output goes to ``directory/train_net.log``."""
    os.makedirs(directory, exist_ok=True)
    cmd = [sys.executable, TRAIN_NET, "--config-file", config_file, "--num-gpus", str(num_gpus),
           *opts, "SEED", str(seed), "OUTPUT_DIR", directory]  # fmt: skip
    start = time.time()
    with open(os.path.join(directory, "train_net.log"), "w") as log:
        returncode = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    wall = time.time() - start
    if returncode != 0:
        with open(os.path.join(directory, "train_net.log")) as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {returncode}; end of its log:\n{tail}")
    run = {
        "config": os.path.relpath(config_file, REPO_ROOT) if config_file.startswith(REPO_ROOT) else config_file,
        "seed": seed,
        "wall_s": round(wall, 1),
        "opts": opts,
        "num_gpus": num_gpus,
        "cpu": cpu_model(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with open(os.path.join(directory, RUN_FILE), "w") as f:
        json.dump(run, f, indent=1)
    return load_run(directory)


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def summary_line(run: dict) -> str:
    aps = ", ".join(f"{label} {run['metrics'][task]:.1f}" for task, label in TASKS if task in run["metrics"])
    return f"{aps}; {format_duration(run['wall_s'])}"


def sweep(config_files: List[str], seeds: List[int], output_dir: str, num_gpus: int, opts: List[str]) -> Dict[str, List[dict]]:
    """Every (config, seed) run, trained unless already done; {config file: [runs in seed order]}."""
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
            print(f"{prefix}: training ... (log: {os.path.join(directory, 'train_net.log')})", flush=True)
            run = train_one(config_file, seed, directory, num_gpus, opts)
            trained_walls.append(run["wall_s"])
            left = sum(load_run(run_dir(output_dir, c, s)) is None for c, s in jobs[number:])
            eta = f"; ETA {format_duration(statistics.mean(trained_walls) * left)} for {left} more" if left else ""
            print(f"{prefix}: {summary_line(run)}{eta}", flush=True)
        results[config_file].append(run)
    return results


def _stats(values: List[float]) -> List[str]:
    return [
        f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}",
        f"{min(values):.1f}",
        f"{max(values):.1f}",
    ]


def markdown_table(results: Dict[str, List[dict]], command: str) -> str:
    """Per config: a row per seed, then mean ± std, min and max of every AP and the wall time."""
    runs = [r for rs in results.values() for r in rs]
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {runs[0]['cpu']}, {os.cpu_count()} logical CPUs, OMP_NUM_THREADS="
        f"{runs[0].get('omp_num_threads') or 'unset'}; wall time per run is the whole train_net.py "
        "process (dataset generation when missing, training, evaluation).",
        "",
    ]
    for config_file, config_runs in results.items():
        tasks = [(t, label) for t, label in TASKS if all(t in r["metrics"] for r in config_runs)]
        lines += [f"### `{config_name(config_file)}` ({len(config_runs)} seeds)", ""]
        lines.append("| seed | " + " | ".join(label for _, label in tasks) + " | wall |")
        lines.append("|---" * (len(tasks) + 2) + "|")
        for r in config_runs:
            aps = " | ".join(f"{r['metrics'][t]:.1f}" for t, _ in tasks)
            lines.append(f"| {r['seed']} | {aps} | {format_duration(r['wall_s'])} |")
        ap_stats = [_stats([r["metrics"][t] for r in config_runs]) for t, _ in tasks]
        walls = [r["wall_s"] for r in config_runs]
        wall_stats = [statistics.mean(walls), min(walls), max(walls)]
        for row, name in enumerate(("mean ± std", "min", "max")):
            cells = " | ".join(s[row] for s in ap_stats)
            lines.append(f"| **{name}** | {cells} | {format_duration(wall_stats[row])} |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-files", nargs="+", default=[os.path.join(REPO_ROOT, "configs", "quickstart.yaml")])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output-dir", default=os.path.join("output", "seeds"))
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per run (train_net.py --num-gpus)")
    parser.add_argument("--table", help="also write the markdown table to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run: KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config_files = [os.path.abspath(c) for c in args.config_files]
    for c in config_files:
        if not os.path.isfile(c):
            sys.exit(f"error: --config-files: {c} does not exist")
    try:
        results = sweep(config_files, args.seeds, args.output_dir, args.num_gpus, list(args.opts))
    except RuntimeError as e:
        sys.exit(f"error: {e}")
    command = "python tools/run_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = markdown_table(results, command)
    print(table)
    if args.table:
        with open(args.table, "w") as f:
            f.write(table + "\n")
        print(f"Table written to {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
