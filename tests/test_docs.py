"""The docs agree with the code and with each other, and speak of the repository alone."""

import os
import re
import subprocess

import pytest

from helpers import REPO_ROOT


def _read(*parts):
    with open(os.path.join(REPO_ROOT, *parts)) as f:
        return f.read()


def _words(text: str) -> str:
    return " ".join(text.split())


def test_generated_parts_of_the_docs_are_what_the_code_writes(capsys):
    """Every ``<!-- generated: NAME -->`` part equals what ``nonlocal_det.harness.docs`` writes."""
    from nonlocal_det.harness import docs

    assert docs.main(["--check", "--cheap"]) == 0, capsys.readouterr().out
    names = {m.group(2) for path in docs.markdown_files() for m in docs._PART.finditer(_read(path))}
    assert names == set(docs.SECTIONS)  # every fact the code holds is somewhere in the docs


@pytest.mark.slow
@pytest.mark.detectron2
def test_the_flop_table_is_what_the_code_counts(capsys):
    """docs/overhead.md's table, counted anew for the 11 configs (minutes: the slow tier)."""
    from nonlocal_det.harness import docs

    assert docs.main(["--check"]) == 0, capsys.readouterr().out


def test_a_stale_generated_part_is_found_and_rewritten():
    from nonlocal_det.harness import docs

    stale = "a\n<!-- generated: init-advice -->\nold words\n<!-- end: init-advice -->\nb"
    fresh = docs.render(stale)
    assert "old words" not in fresh and docs.SECTIONS["init-advice"]() in fresh
    assert fresh.startswith("a\n<!-- generated: init-advice -->\n") and fresh.endswith("b")
    assert docs.render(fresh) == fresh


def test_nothing_in_the_repository_speaks_of_issues_or_sessions():
    folders = ["README.md", "docs", "datasets", "nonlocal_det", "tools", "configs", "tests"]
    folders += ["train_net.py", "setup.py", "pyproject.toml", ".ci"]
    out = subprocess.run(
        ["grep", "-rniE", "--exclude=test_docs.py", r"issue ?#?[0-9]+|\bsessions?\b|no time left"]
        + folders,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    ).stdout
    lines = [
        line
        for line in out.splitlines()
        if not re.search(r"github\.com/[^ ]+/(issues|pull)/", line) and "/__pycache__/" not in line
    ]
    assert lines == []


def test_readme_is_short_and_shows_the_two_test_commands_full_suite_second():
    readme = _read("README.md")
    assert len(readme.splitlines()) <= 150
    assert "<<" not in readme
    commands = re.findall(r"\.venv/bin/python -m pytest tests -q -rs.*", readme)
    assert commands[:2] == [
        '.venv/bin/python -m pytest tests -q -rs -m "not slow"',
        ".venv/bin/python -m pytest tests -q -rs",
    ]
    assert ".venv/bin/python -m pytest tests -q -rs\n" in _read(".ci", "run")
