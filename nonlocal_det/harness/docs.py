"""
Facts the code holds, written into the docs by this command, so that each has one source:

    python -m nonlocal_det.harness.docs           # rewrite the generated parts of the docs
    python -m nonlocal_det.harness.docs --check   # exit 1 and name the parts that differ

A generated part sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->`` in a
markdown file of the repository; ``SECTIONS`` maps each NAME to the function that writes it.
"""

import argparse
import glob
import os
import re
import sys
from typing import Callable, Dict

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def _init_advice() -> str:
    from nonlocal_det.layers import INIT_ADVICE

    return INIT_ADVICE


def _data_rules() -> str:
    from .data.coco_checks import DATA_RULES

    return "\n".join(
        ["| applies to | rule |", "|---|---|"] + [f"| {r.subject} | {r.text} |" for r in DATA_RULES]
    )


def _config_rules() -> str:
    from .config_rules import CROSS_FIELD_RULES, LAZY_DOMAINS, YAML_DOMAINS

    rows = [(f"`{k}`", d.description) for k, d in {**YAML_DOMAINS, **LAZY_DOMAINS}.items()]
    rows += [(", ".join(f"`{k}`" for k in r.keys), r.description) for r in CROSS_FIELD_RULES]
    return "\n".join(["| key | rule |", "|---|---|"] + [f"| {k} | {d} |" for k, d in rows])


def _flop_table() -> str:
    from .analysis.model_costs import overhead_table

    return overhead_table()


SECTIONS: Dict[str, Callable[[], str]] = {
    "init-advice": _init_advice,
    "data-rules": _data_rules,
    "config-rules": _config_rules,
    "flop-table": _flop_table,  # builds and counts 11 COCO models: a few minutes
}
# Parts that take minutes; ``--cheap`` leaves them as they are (the fast tests do).
SLOW_SECTIONS = ("flop-table",)

_PART = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end: \2 -->)", re.S)


def render(text: str, skip=()) -> str:
    """``text`` with every generated part but those named in ``skip`` written anew."""
    return _PART.sub(
        lambda m: (
            m.group(0)
            if m.group(2) in skip
            else m.group(1) + SECTIONS[m.group(2)]().strip() + "\n" + m.group(4)
        ),
        text,
    )


def markdown_files():
    return [os.path.join(REPO_ROOT, "README.md")] + sorted(
        glob.glob(os.path.join(REPO_ROOT, "docs", "*.md"))
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; list stale parts")
    parser.add_argument("--cheap", action="store_true", help="leave the parts that take minutes")
    args = parser.parse_args(argv)
    stale = []
    for path in markdown_files():
        with open(path) as f:
            text = f.read()
        new = render(text, SLOW_SECTIONS if args.cheap else ())
        if new != text:
            stale.append(os.path.relpath(path, REPO_ROOT))
            if not args.check:
                with open(path, "w") as f:
                    f.write(new)
    differ = "differ from the code (run python -m nonlocal_det.harness.docs)"
    for path in stale:
        print(f"{path}: generated parts {differ if args.check else 'rewritten'}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
