"""Markdown tables and the numbers in them, as every tool writes them."""

import os
import statistics
from typing import Iterable, List, Optional, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> List[str]:
    """The lines of a markdown table: the header, the rule, a line per row."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def format_duration(seconds: Optional[float]) -> str:
    """7m56s, 1h02m, or — for None."""
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def format_ap(value: Optional[float]) -> str:
    """47.3, or — for None (an AP COCO could not compute: no detection at all)."""
    return "—" if value is None else f"{value:.1f}"


def mean_std(values: Sequence[Optional[float]]) -> str:
    """
    "47.3 ± 1.3": the mean and the population standard deviation of the values that are not None,
    with "(2 of 3 runs)" when some are None, and — when all are.
    """
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    text = f"{statistics.mean(known):.1f} ± {statistics.pstdev(known):.1f}"
    return text if len(known) == len(values) else f"{text} ({len(known)} of {len(values)} runs)"


def write_text(path: str, text: str) -> None:
    """Write a report, creating its folder; prints where it went."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    print(f"wrote {path}")
