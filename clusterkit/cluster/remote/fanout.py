"""Fan-out: one task per host in parallel, each under its deadline, failures as per-host values.

A host whose task outlives the deadline is reported as timed out, its connections are closed (see
:mod:`clusterkit.cluster.remote.cancel`) and its thread gets a short grace to end, so repeated fan-outs (a
monitor, a retry loop) do not leave threads piling up behind frozen nodes. Progress goes to any
:class:`ProgressListener`: a rich view on a terminal, a Textual widget, or nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from clusterkit.cluster.remote.cancel import CancelScope, running_in
from clusterkit.cluster.remote.ssh import SshSettings, explain

T = TypeVar("T")
#: How long a cancelled host's thread may take to notice its closed connection and end.
GRACE_S = 2.0


class ProgressListener(Protocol):
    """Anything that shows per-host progress (``clusterkit.ui.progress.NodeProgress``, a Textual view)."""

    def update(self, host: str, state: str, detail: str = "") -> None:
        """``host`` is now in ``state`` (``connecting``, ``ok``, ``failed``, ``timed out``...)."""


@dataclass
class HostResult(Generic[T]):
    """One host's outcome: a value, or an error saying what went wrong and how to fix it."""

    host: str
    value: T | None = None
    error: str | None = None
    fix: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def fan_out(hosts: Sequence[str], task: Callable[[str], T], timeout_s: float,
            progress: ProgressListener | None = None, settings: SshSettings | None = None
            ) -> dict[str, HostResult[T]]:
    """Run ``task(host)`` for every host in parallel; each gets ``timeout_s``, nobody waits longer.

    Exceptions become per-host errors (see :func:`~clusterkit.cluster.remote.ssh.explain`). Results keep
    ``hosts`` order.
    """
    settings = settings or SshSettings()
    results: dict[str, HostResult[T]] = {}
    lock = threading.Lock()
    scopes = {host: CancelScope() for host in hosts}

    def work(host: str) -> None:
        started = time.monotonic()
        try:
            with running_in(scopes[host]):
                value = task(host)
            result: HostResult[T] = HostResult(host, value=value, seconds=time.monotonic() - started)
        except Exception as exc:  # every failure is a per-host value, never a crash of the run
            err = explain(exc, host, settings)
            result = HostResult(host, error=str(err), fix=err.fix, seconds=time.monotonic() - started)
        with lock:
            if host in results:  # given up already: its late answer is not news
                return
            results[host] = result
        if progress:
            progress.update(host, "ok" if result.ok else "failed", "" if result.ok else str(result.error))

    threads = {h: threading.Thread(target=work, args=(h,), name=f"ssh:{h}", daemon=True) for h in hosts}
    deadline = time.monotonic() + timeout_s
    for thread in threads.values():
        thread.start()
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    late = []
    with lock:
        for host in hosts:
            if host not in results:
                late.append(host)
                results[host] = HostResult(host, error=f"{host} gave no answer within {timeout_s:g}s "
                                                       "(frozen, overloaded, or a hung driver?)",
                                           fix=f"check {host} by hand: ssh {host} uptime", seconds=timeout_s)
    for host in late:
        scopes[host].cancel()
        if progress:
            progress.update(host, "timed out", f"no answer within {timeout_s:g}s")
    grace_end = time.monotonic() + GRACE_S
    for host in late:
        threads[host].join(max(0.0, grace_end - time.monotonic()))
    return {h: results[h] for h in hosts}


def live_fan_out_threads() -> int:
    """Threads of fan-outs still running (tests: given-up hosts must not leave threads behind)."""
    return sum(1 for t in threading.enumerate() if t.name.startswith("ssh:") and t.is_alive())
