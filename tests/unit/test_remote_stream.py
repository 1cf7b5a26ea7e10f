"""LineStream: lines as they arrive, a dead or silent command reconnected with backoff, stop() that never hangs.

The channels are real: local processes (ProcessOpener) and, for a host that accepts TCP but never
greets (a frozen sshd), a real listening socket behind the real SSH opener. SSH to live nodes is
proven on the namespace cluster (tests/cluster/test_monitor_tmux.py).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from clusterkit.cluster.remote import SshSettings
from clusterkit.cluster.remote.stream import Backoff, LineStream, ProcessOpener, SshOpener, StreamState

FAST = Backoff(initial_s=0.1, factor=2, max_s=0.4, jitter=0)


class Collector:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.states: list[StreamState] = []
        self.lock = threading.Lock()

    def line(self, host: str, line: str, at: float) -> None:
        with self.lock:
            self.lines.append(line)

    def state(self, state: StreamState) -> None:
        with self.lock:
            self.states.append(state)

    def statuses(self) -> list[str]:
        with self.lock:
            return [s.status for s in self.states]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_lines_arrive_as_they_are_printed_and_a_dead_command_is_restarted() -> None:
    seen = Collector()
    stream = LineStream("local", "echo one; echo two; exit 3", ProcessOpener(), seen.line, seen.state,
                        backoff=FAST)
    stream.start()
    try:
        wait_for(lambda: len(seen.lines) >= 4)
        wait_for(lambda: stream.state.connects >= 2)
    finally:
        assert stream.stop()
    assert seen.lines[:4] == ["one", "two", "one", "two"]
    lost = next(s for s in seen.states if s.status == "lost")
    assert lost.error == "the command exited 3" and lost.connects == 1
    assert seen.statuses()[:3] == ["connected", "lost", "connecting"]
    assert stream.state.status == "stopped"


def test_a_silent_command_goes_stale_then_is_closed_and_reopened() -> None:
    seen = Collector()
    stream = LineStream("local", "echo hello; exec sleep 60", ProcessOpener(), seen.line, seen.state,
                        stale_after_s=0.3, lost_after_s=0.8, backoff=FAST, poll_s=0.05)
    stream.start()
    try:
        wait_for(lambda: "lost" in seen.statuses())
        wait_for(lambda: stream.state.connects >= 2)
    finally:
        stream.stop()
    statuses = seen.statuses()
    assert statuses.index("stale") < statuses.index("lost")
    lost = next(s for s in seen.states if s.status == "lost")
    assert lost.error is not None and lost.error.startswith("no output for 1s")


def test_a_host_that_never_greets_is_lost_with_the_reason_and_stop_returns_at_once() -> None:
    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(8)  # the kernel accepts the TCP connection; nobody ever sends an SSH banner
    port = frozen.getsockname()[1]
    seen = Collector()
    opener = SshOpener(SshSettings(port=port, connect_timeout_s=1.0))
    stream = LineStream("127.0.0.1", "true", opener, seen.line, seen.state, backoff=FAST)
    try:
        stream.start()
        wait_for(lambda: "lost" in seen.statuses(), timeout=15)
        lost = next(s for s in seen.states if s.status == "lost")
        assert lost.error is not None and "did not answer within 1s" in lost.error
        wait_for(lambda: seen.statuses().count("connecting") >= 2, timeout=15)  # retrying, with backoff
        started = time.monotonic()
        stream.stop(timeout_s=0.3)  # even in the middle of a connect attempt
        assert time.monotonic() - started < 1.0
        assert stream.state.status == "stopped"
    finally:
        frozen.close()


def test_backoff_grows_to_its_ceiling() -> None:
    backoff = Backoff(initial_s=1, factor=2, max_s=5, jitter=0)
    assert [backoff.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
