"""pytest hooks: Detectron2 tests are marked, skipped without it, and counted. Shared helpers
are in helpers.py."""

import os

import pytest

from helpers import DETECTRON2_SKIP_REASON, HAS_DETECTRON2

# Set by CI: a Detectron2 test that would be skipped is a missing install step, not a pass.
REQUIRE_DETECTRON2_ENV = "NONLOCAL_DET_REQUIRE_DETECTRON2"


def pytest_configure(config):
    config.addinivalue_line("markers", "detectron2: test needs Detectron2 installed")
    config.addinivalue_line(
        "markers", "slow: trains, launches processes or runs end to end; left out of the fast tier"
    )


def pytest_collection_modifyitems(config, items):
    if os.environ.get(REQUIRE_DETECTRON2_ENV) == "1" and not HAS_DETECTRON2:
        needing = sum(item.get_closest_marker("detectron2") is not None for item in items)
        raise pytest.UsageError(
            f"{REQUIRE_DETECTRON2_ENV}=1 and Detectron2 cannot be imported, so {needing} "
            "Detectron2 test(s) would be skipped. Install it with "
            "`python3 tools/setup_env.py --detectron2-wheel PATH` (or build it from source: see "
            "README), then rerun."
        )
    for item in items:
        if item.get_closest_marker("detectron2") is not None and not HAS_DETECTRON2:
            item.add_marker(pytest.mark.skip(reason=DETECTRON2_SKIP_REASON))


def pytest_terminal_summary(terminalreporter):
    d2_tests = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if DETECTRON2_SKIP_REASON in str(r.longrepr)
    ]
    ran = "installed" if HAS_DETECTRON2 else "NOT installed"
    terminalreporter.write_line(
        f"Detectron2 {ran}: {len(d2_tests)} Detectron2 test(s) skipped for that reason."
    )
