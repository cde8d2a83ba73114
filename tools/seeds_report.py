#!/usr/bin/env python
"""
The report of a seed sweep from its run summaries alone (nothing is trained): a table per config,
the ablation table, the papers' numbers where they apply, and the plot
(``nonlocal_det.harness.cli.seed_report``). tools/run_seeds.py writes the summaries (--summary-dir).

    python tools/seeds_report.py docs/ablation_runs \
        --config-files configs/longrange_baseline.yaml configs/longrange_NL.yaml \
        --seeds 0 1 2 --per-category --category-mean team=team_red,team_green --no-costs \
        --table docs/ablation_table.md --plot docs/images/ablation.png
"""

import argparse
import os
import sys

from nonlocal_det.errors import exit_on_user_error
from nonlocal_det.harness.cli.args import non_negative_int
from nonlocal_det.harness.cli.seed_report import add_report_arguments, load_summaries, write_report

PAPER_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_results.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summary_dir", help="the --summary-dir of the sweep")
    parser.add_argument("--config-files", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=non_negative_int, required=True)
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    results = load_summaries(args.summary_dir, args.config_files, args.seeds)
    command = "python tools/seeds_report.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(results, args, command, [], PAPER_RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
