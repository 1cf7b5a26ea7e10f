"""`clusterkit monitor` on this machine: bad numbers and paths refused before anything starts, the job's
progress recorded and replayed, a cut recording played up to its cut, no agent left behind by the head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "tests" / "fixtures" / "monitor" / "synthetic-4x8gpu-job.jsonl"


def clusterkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clusterkit", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("flags", "message"), [
    (["--interval", "inf"], "--interval inf: must be 0.1 to 60 seconds"),
    (["--interval", "nan"], "--interval nan: must be 0.1 to 60 seconds"),
    (["--interval", "1e9"], "--interval 1e+09: must be 0.1 to 60 seconds"),
    (["--interval", "0"], "--interval 0: must be 0.1 to 60 seconds"),
    (["--wait", "inf"], "--wait inf: must be a number of seconds, 0 or more"),
    (["--speed", "nan"], "--speed nan: must be 0 (paused) or more"),
    (["--slow-every", "-1"], "--slow-every -1: must be 0 (never) or more"),
])
def test_numbers_out_of_range_are_usage_errors_before_any_agent_starts(flags: list[str], message: str) -> None:
    """issue 19, C2: `--interval inf|nan` was accepted (the agents crashed) and `--once --interval 1e9`
    never returned."""
    done = clusterkit("monitor", "--once", *flags)
    assert (done.returncode, done.stdout) == (2, "")
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_recording_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    """issue 19, C1: `monitor --record /root/x.rec` as a user without access was an internal error (exit 3)."""
    done = clusterkit("monitor", "--once", "--record", str(tmp_path / "no-such-dir" / "x.rec"))
    assert done.returncode == 2, done.stderr
    assert f"{tmp_path}/no-such-dir/x.rec: cannot write the recording: No such file or directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_log_that_does_not_exist_is_a_usage_error_and_so_is_one_beside_a_replay(tmp_path: Path) -> None:
    """issue 19, M1: a nonexistent --log printed `job: no step yet` with no error."""
    done = clusterkit("monitor", "--once", "--log", str(tmp_path / "train.log"))
    assert done.returncode == 2
    assert f"--log: cannot read {tmp_path}/train.log: No such file or directory" in done.stderr
    done = clusterkit("monitor", "--replay", str(JOB), "--once", "--log", str(JOB))
    assert done.returncode == 2 and "a recording made with --log holds the job's progress" in done.stderr


def test_the_jobs_progress_is_recorded_and_a_replay_shows_it(tmp_path: Path) -> None:
    """issue 19, M1: `--record` did not save the job's progress, so a replay showed none."""
    log, recording = tmp_path / "train.log", tmp_path / "monitor.rec"
    log.write_text("[2026-05-28 20:26:01,000] [INFO] [logging.py:128:log_dist] [Rank 0] step=10, skipped=0\n"
                   "[2026-05-28 20:26:11,000] [INFO] [logging.py:128:log_dist] [Rank 0] step=20, skipped=0\n"
                   "{'loss': 0.25, 'learning_rate': 1e-05}\n")
    live = clusterkit("monitor", "--once", "--json", "--interval", "0.2", "--log", str(log), "--record",
                      str(recording))
    assert live.returncode == 0, live.stderr
    progress = json.loads(live.stdout)["progress"]
    assert (progress["step"], progress["loss"], progress["step_time_s"]) == (20, 0.25, 1.0)
    replay = clusterkit("monitor", "--replay", str(recording), "--once", "--json")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["progress"] == progress
    table = clusterkit("monitor", "--replay", str(recording), "--once")
    assert "job: step 20, loss 0.25, 1 s/step" in table.stdout


def test_a_recording_cut_mid_line_is_played_up_to_the_cut_and_says_where(tmp_path: Path) -> None:
    """issue 19, C3: a recording cut mid-line (as one is when its session dies) could not be replayed."""
    lines = JOB.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:-1]) + lines[-1][:40])
    done = clusterkit("monitor", "--replay", str(cut), "--once", "--json")
    assert done.returncode == 1, done.stderr  # as the whole recording: a rank exited
    doc = json.loads(done.stdout)
    assert len(doc["nodes"]) == 4 and len(doc["ranks"]) == 32
    assert doc["notice"] == (f"{cut}:{len(lines)}: the recording ends in the middle of this line (its writer "
                             f"stopped mid-line): played up to line {len(lines) - 1}")
    table = clusterkit("monitor", "--replay", str(cut), "--once")
    # The table folds a path longer than the terminal (an xdist worker's tmp_path is) where it likes.
    said = f"{cut}:{len(lines)}: the recording ends in the middle"
    assert "".join(said.split()) in "".join(table.stdout.split())


def agents_of(pid: int) -> list[int]:
    """The `agent stream` processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == pid and b"clusterkit.node.agent" in argv and b"stream" in argv:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] != "Z"


def test_no_agent_outlives_a_monitor_killed_in_the_middle_of_a_long_interval() -> None:
    """issue 19, C2: agents must end when their channel does, whatever the interval."""
    head = subprocess.Popen([sys.executable, "-m", "clusterkit", "monitor", "--once", "--interval", "60",
                             "--wait", "120"], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    agents: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not agents and time.monotonic() < deadline:
            time.sleep(0.2)
            agents = agents_of(head.pid)
        assert agents, "the monitor started no agent"
        time.sleep(2)  # the agent has sent its first sample and sleeps until the next, 60 s on
    finally:
        os.kill(head.pid, signal.SIGKILL)
        head.wait()
    deadline = time.monotonic() + 15
    while any(alive(a) for a in agents) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [a for a in agents if alive(a)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "an agent outlived the monitor that started it"
