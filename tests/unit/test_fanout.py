"""Fan-out: every host under its deadline; a host given up has its connection closed and no thread left."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from clusterkit.cluster.remote import SshSettings, connect, fan_out
from clusterkit.cluster.remote.cancel import CancelScope, IdleWatchdog
from clusterkit.cluster.remote.fanout import GRACE_S, live_fan_out_threads


@pytest.fixture
def frozen_sshd() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word: an sshd whose node is frozen."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_a_frozen_host_is_given_up_at_its_deadline_and_leaves_no_thread(frozen_sshd: int) -> None:
    settings = SshSettings(port=frozen_sshd, connect_timeout_s=60)  # paramiko alone would wait a minute

    def task(host: str) -> str:
        if host == "quick":
            return "answer"
        with connect("127.0.0.1", settings):
            return "never"

    started = time.monotonic()
    results = fan_out(["quick", "frozen-a", "frozen-b"], task, timeout_s=1.5, settings=settings)
    elapsed = time.monotonic() - started
    assert results["quick"].value == "answer"
    for host in ("frozen-a", "frozen-b"):
        assert results[host].error == f"{host} gave no answer within 1.5s (frozen, overloaded, or a hung driver?)"
    assert elapsed < 1.5 + GRACE_S + 1
    assert live_fan_out_threads() == 0


def test_a_late_answer_after_the_deadline_does_not_replace_the_timeout() -> None:
    release = threading.Event()

    def task(host: str) -> str:
        release.wait(5)
        return "late"

    results = fan_out(["slow"], task, timeout_s=0.3)
    release.set()
    time.sleep(0.2)
    assert results["slow"].error is not None and results["slow"].value is None


def test_an_idle_watchdog_ends_a_write_blocked_on_a_peer_that_stopped_reading() -> None:
    # What paramiko does to a vanished peer once the send buffer is full: the write waits for TCP to
    # give up (~15 minutes). The watchdog closes the socket after its limit and the write ends.
    sender, silent_peer = socket.socketpair()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    scope = CancelScope()
    ended: list[BaseException] = []

    def write_forever() -> None:
        try:
            while True:
                sender.sendall(b"x" * 65536)
        except OSError as exc:
            ended.append(exc)

    with IdleWatchdog(scope, limit_s=0.5) as watchdog:
        scope.add(lambda: sender.shutdown(socket.SHUT_RDWR))
        writer = threading.Thread(target=write_forever, daemon=True)
        writer.start()
        writer.join(timeout=10)
    silent_peer.close()
    sender.close()
    assert watchdog.fired and scope.cancelled.is_set()
    assert not writer.is_alive() and ended


def test_an_idle_watchdog_fed_in_time_never_fires() -> None:
    scope = CancelScope()
    with IdleWatchdog(scope, limit_s=0.4) as watchdog:
        for _ in range(10):
            time.sleep(0.1)
            watchdog.alive()
    assert not watchdog.fired and not scope.cancelled.is_set()
