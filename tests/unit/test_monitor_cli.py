"""`clusterkit monitor` on this machine: bad numbers and paths refused before anything starts, no agent
left behind by the head."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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
        if int(stat[stat.rfind(")") + 2:].split()[1]) == pid and b"clusterkit.agent" in argv and b"stream" in argv:
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
