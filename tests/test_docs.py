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


ADVICE = _words(
    'Which INIT, as measured: "identity" to fine-tune a pre-trained model, and for a block with '
    'a norm after W_z even from scratch (the quickstart: as good as "small", and "standard" '
    'diverged); "standard" for a block without a norm trained from scratch (NORM "", the '
    "long-range configs)."
)


@pytest.mark.parametrize(
    "path",
    [
        "nonlocal_det/config.py",
        "nonlocal_det/layers/nonlocal_block.py",
        "nonlocal_det/layers/cgnl_block.py",
        "nonlocal_det/layers/context_block.py",
        "docs/usage.md",
    ],
)
def test_the_init_advice_is_the_same_sentence_everywhere(path):
    text = _read(path)
    if path.endswith(".py"):
        text = re.sub(r"^\s*#", "", text, flags=re.M)  # comments read as prose
    assert ADVICE in _words(text)
    assert "start from `small`" not in text and "start from small" not in text


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
