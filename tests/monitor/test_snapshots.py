"""Snapshots (pytest-textual-snapshot) of the monitor's main screens, fed from the synthetic job recording.

The replay is paused at a fixed second, so every age and value is the same on every run. After an
intended change of the layout: `pytest tests/monitor/test_snapshots.py --snapshot-update`, then look
at the SVGs in tests/monitor/__snapshots__/ before committing them.
"""

from __future__ import annotations

from typing import Any

from tests.monitor.conftest import SIZE, replay_app


def test_overview_with_a_node_down_and_a_straggler(snap_compare: Any) -> None:
    app, _ = replay_app(23)
    assert snap_compare(app, terminal_size=SIZE)


def test_node_view_of_the_straggling_node(snap_compare: Any) -> None:
    app, _ = replay_app(30)
    assert snap_compare(app, press=["_", "down", "down", "enter", "_"], terminal_size=SIZE)


def test_job_view_with_an_exited_rank(snap_compare: Any) -> None:
    app, _ = replay_app(38)
    assert snap_compare(app, press=["_", "j", "_"], terminal_size=SIZE)


def test_help_screen(snap_compare: Any) -> None:
    app, _ = replay_app(5)
    assert snap_compare(app, press=["_", "question_mark", "_"], terminal_size=SIZE)
