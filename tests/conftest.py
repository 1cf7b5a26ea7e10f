"""Session-wide test settings.

``CLUSTERKIT_TEST_BUDGET_S`` (``.ci/run`` sets it): seconds after which cluster and slow tests that have
not started yet are skipped, each with the reason, so a run on a slow machine ends inside CI's limit and
says what it left out instead of being killed with nothing reported. ``scripts/test`` alone runs all.
"""

from __future__ import annotations

import os
import time

import pytest

_SESSION_STARTED = time.monotonic()


def pytest_runtest_setup(item: pytest.Item) -> None:
    budget = os.environ.get("CLUSTERKIT_TEST_BUDGET_S")
    if not budget or not (item.get_closest_marker("cluster") or item.get_closest_marker("slow")):
        return
    spent = time.monotonic() - _SESSION_STARTED
    if spent > float(budget):
        pytest.skip(f"the run's time budget (CLUSTERKIT_TEST_BUDGET_S={budget}) was spent after {spent:.0f} s; "
                    "scripts/test without it runs this too")


@pytest.fixture(autouse=True)
def _private_clusterkit_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """doctor and bench save every run into the user's clusterkit directory: tests keep theirs apart."""
    monkeypatch.setenv("CLUSTERKIT_HOME", str(tmp_path_factory.mktemp("clusterkit-home")))
