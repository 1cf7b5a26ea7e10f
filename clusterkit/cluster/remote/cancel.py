"""Cancelling one host's work: what a task opened for a host is closed when that host's deadline passes.

:func:`clusterkit.cluster.remote.fanout.fan_out` runs each host's task inside a :class:`CancelScope`;
connections and transports register their ``close`` with :func:`on_cancel`. Closing them wakes a
thread stuck reading from a frozen node, so it ends instead of piling up behind the deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

_current = threading.local()


class CancelScope:
    """Callbacks to run once when a host's work is given up (thread-safe, idempotent)."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()
        self.cancelled = threading.Event()

    def add(self, callback: Callable[[], object]) -> None:
        with self._lock:
            if not self.cancelled.is_set():
                self._callbacks.append(callback)
                return
        _quietly(callback)  # already given up: close at once

    def cancel(self) -> None:
        with self._lock:
            if self.cancelled.is_set():
                return
            self.cancelled.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _quietly(callback)


def _quietly(callback: Callable[[], object]) -> None:
    with suppress(Exception):  # closing what is already broken may raise; the host is given up anyway
        callback()


@contextmanager
def running_in(scope: CancelScope) -> Iterator[CancelScope]:
    """Make ``scope`` the current thread's: :func:`on_cancel` registers with it."""
    previous = getattr(_current, "scope", None)
    _current.scope = scope
    try:
        yield scope
    finally:
        _current.scope = previous


def on_cancel(callback: Callable[[], object]) -> None:
    """Run ``callback`` if the current host's work is given up (no-op outside a fan-out)."""
    scope: CancelScope | None = getattr(_current, "scope", None)
    if scope is not None:
        scope.add(callback)


def cancelled() -> bool:
    """Whether the current host's work was given up (for loops that can stop early)."""
    scope: CancelScope | None = getattr(_current, "scope", None)
    return scope is not None and scope.cancelled.is_set()


class IdleWatchdog:
    """Cancels ``scope`` once :meth:`alive` has not been called for ``limit_s`` seconds.

    A paramiko channel timeout bounds a wait for the peer's SSH window, not a socket write: when the
    peer vanishes with the kernel's send buffer full, paramiko retries that write until TCP gives up
    (``tcp_retries2``: about 15 minutes). Closing the transport is what ends it.
    """

    def __init__(self, scope: CancelScope, limit_s: float) -> None:
        self.scope, self.limit_s = scope, limit_s
        self.fired = False
        self._last = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="idle-watchdog", daemon=True)

    def alive(self) -> None:
        """Something moved: start the idle clock again."""
        self._last = time.monotonic()

    def idle_s(self) -> float:
        return time.monotonic() - self._last

    def __enter__(self) -> IdleWatchdog:
        self._last = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.limit_s / 4)):
            if self.idle_s() > self.limit_s:
                self.fired = True
                self.scope.cancel()
                return
