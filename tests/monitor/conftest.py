"""Monitor UI tests run the real app headless on a recording, paused and stepped: never on live timers."""

from __future__ import annotations

from pathlib import Path

from clusterkit.monitor.sources import ReplaySource
from clusterkit.ui.tui.app import MonitorApp
from clusterkit.ui.tui.thresholds import Thresholds

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "monitor"
#: 4 nodes x 8 GPUs, 40 s: GPU5 of node03 sags from 8 s, node02's agent dies at 20 s and is back at 27 s,
#: rank 31 (node04, local 7) exits at 34 s, node01's GPU2 runs at its power cap. See tests/monitor/synthetic.py.
JOB = FIXTURES / "synthetic-4x8gpu-job.jsonl"
SIZE = (160, 44)


def replay_app(at_second: float, recording: Path = JOB) -> tuple[MonitorApp, ReplaySource]:
    """The app over a paused replay, already at ``at_second`` into the recording."""
    source = ReplaySource(recording, speed=0)
    source.seek(source.start_time + at_second)
    # refresh_s is long: in tests only keys and explicit steps change what is shown.
    return MonitorApp(source, Thresholds.for_interval(1.0), refresh_s=3600, title="clusterkit monitor (test)"), source
