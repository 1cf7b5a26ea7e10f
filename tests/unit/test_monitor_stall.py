"""A job whose log stops moving is stalled after max(5 x its usual gap between steps, 30 s): judged with
the clock passed in, from the progress the log parser reads."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from clusterkit.monitor.progress import Progress, ProgressParser
from clusterkit.monitor.stall import detect_stall, stall_threshold
from tests.unit.test_monitor_cli import clusterkit

T0 = 1_800_000_000.0


def test_the_threshold_is_five_usual_gaps_but_never_under_the_floor() -> None:
    assert stall_threshold(Progress(step=1, line_gap_s=10.0)) == 50.0
    assert stall_threshold(Progress(step=1, step_time_s=0.2)) == 30.0
    assert stall_threshold(Progress(step=1)) == 30.0
    assert stall_threshold(Progress(step=1, line_gap_s=10.0), multiple=3, floor_s=5) == 30.0


def test_a_log_silent_for_less_than_the_threshold_is_not_stalled_and_longer_is() -> None:
    progress = Progress(step=120, line_gap_s=10.0, updated_at=T0)
    assert detect_stall(progress, T0 + 49) is None
    stall = detect_stall(progress, T0 + 61)
    assert stall is not None and (stall.step, stall.seconds, stall.since) == (120, 61.0, T0)
    assert stall.describe() == "job stalled at step 120 for 61 s (stall after 50 s)"


def test_no_stall_before_a_first_step_nor_while_the_log_cannot_be_read() -> None:
    assert detect_stall(Progress(), T0 + 1000) is None
    assert detect_stall(Progress(step=5, updated_at=T0, error="cannot read x"), T0 + 1000) is None


def test_the_usual_gap_is_measured_between_lines_that_move_the_step() -> None:
    parser = ProgressParser()
    for i, second in enumerate((0, 10, 20, 40)):  # DeepSpeed printing every 10 steps; one slow stretch
        parser.feed(f"[2026-05-28 20:26:{second:02d},000] [INFO] [Rank 0] step={10 * (i + 1)}, skipped=0",
                    T0, read_live=False)
    assert parser.progress.line_gap_s == 10.0  # the median of 10, 10, 20
    assert parser.progress.step_time_s is not None and abs(parser.progress.step_time_s - 4 / 3) < 1e-9


def test_monitor_once_json_carries_the_stall_of_a_log_that_stopped_moving(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("[2026-05-28 20:26:01,000] [INFO] [logging.py:128:log_dist] [Rank 0] step=10, skipped=0\n"
                   "[2026-05-28 20:26:03,000] [INFO] [logging.py:128:log_dist] [Rank 0] step=20, skipped=0\n")
    written = time.time() - 100
    os.utime(log, (written, written))
    done = clusterkit("monitor", "--once", "--json", "--interval", "0.2", "--log", str(log))
    assert done.returncode == 1, done.stderr  # a stalled job is a critical alert
    doc = json.loads(done.stdout)
    assert doc["stall"]["step"] == 20 and 95 < doc["stall"]["seconds"] < 200
    assert abs(doc["stall"]["since"] - written) < 1 and doc["stall"]["threshold_s"] == 30.0
    assert any(a["host"] == "job" and a["text"].startswith("job stalled at step 20 for") for a in doc["alerts"])
    fresh = clusterkit("monitor", "--once", "--json", "--interval", "0.2", "--log", str(log),
                       "--alert", "job_stall_floor_s=1000")
    assert json.loads(fresh.stdout)["stall"] is None
