"""Long-lived line streams from hosts: one channel per host, reconnect with backoff, state as a value.

``LineStream(host, command, opener, on_line, on_state)`` runs ``command`` on ``host`` through
``opener`` (``SshOpener``: an SSH exec channel; ``ProcessOpener``: a local process) and calls
``on_line(host, line, received_at)`` for every line as it arrives, from its own daemon thread.
Its ``state`` (a frozen ``StreamState``) moves through ``connecting`` -> ``connected`` ->
``stale`` (no line for ``stale_after_s``) -> ``lost`` (no line for ``lost_after_s``, or the channel
broke: it is closed and reopened after a backoff). ``stop()`` returns within its timeout whatever
the host does: a frozen host cannot hold the caller.

Nothing here knows what the lines mean (the monitor's samples, a job's log).
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import paramiko
    from fabric import Connection

    from clusterkit.cluster.remote import SshSettings

Status = Literal["connecting", "connected", "stale", "lost", "stopped"]


@dataclass(frozen=True)
class StreamState:
    """Where one host's stream stands (times from ``time.time()``)."""

    host: str
    status: Status
    since: float
    last_line_at: float | None = None
    error: str | None = None
    #: Failed attempts since the last successful connect.
    attempts: int = 0
    #: Successful connects so far (more than one: it reconnected).
    connects: int = 0


class ByteChannel(Protocol):
    """An open channel: ``read`` returns bytes, ``b""`` when nothing came within the timeout, or
    ``None`` once the far end closed; ``close`` must not block for long."""

    def read(self, timeout_s: float) -> bytes | None: ...
    def close(self) -> None: ...
    def describe_end(self) -> str: ...


#: ``opener(host, command)`` -> an open channel running ``command``; raises with a readable message.
ChannelOpener = Callable[[str, str], ByteChannel]


@dataclass
class Backoff:
    """Exponential delays with jitter between reconnect attempts."""

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))
        return base * (1.0 + random.uniform(-self.jitter, self.jitter))


class LineStream:
    """One host's command, kept running; lines and state changes go to the callbacks."""

    def __init__(self, host: str, command: str, opener: ChannelOpener,
                 on_line: Callable[[str, str, float], None],
                 on_state: Callable[[StreamState], None] | None = None, *,
                 stale_after_s: float = 3.0, lost_after_s: float = 10.0, backoff: Backoff | None = None,
                 poll_s: float = 0.2, clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.command = command
        self._opener = opener
        self._on_line = on_line
        self._on_state = on_state
        self.stale_after_s = stale_after_s
        self.lost_after_s = lost_after_s
        self.backoff = backoff or Backoff()
        self._poll_s = poll_s
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._channel: ByteChannel | None = None
        self._state = StreamState(host, "connecting", clock())
        self._thread = threading.Thread(target=self._run, name=f"stream:{host}", daemon=True)

    @property
    def state(self) -> StreamState:
        return self._state

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Flag the thread to end and close the channel; returns at once (stop many, then join)."""
        self._stop.set()
        with self._lock:
            channel = self._channel
        if channel is not None:
            _close_quietly(channel)

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Close the channel and end the thread; False if it did not end within ``timeout_s``
        (it is a daemon thread, so it cannot keep the process alive)."""
        self.request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._set(status="stopped")
        return not self._thread.is_alive()

    def _set(self, **changes: object) -> None:
        """Change the state; the callback hears of it only when more than ``last_line_at`` changed."""
        previous = self._state
        if previous.status == "stopped":
            return
        state = replace(previous, **changes)  # type: ignore[arg-type]
        if state.status != previous.status:
            state = replace(state, since=self._clock())
        self._state = state
        if self._on_state is not None and replace(state, last_line_at=None) != replace(previous, last_line_at=None):
            self._on_state(state)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self._set(status="connecting")
            try:
                channel = self._opener(self.host, self.command)
            except Exception as exc:  # every failure to connect is a state, then a retry
                attempt += 1
                self._set(status="lost", error=str(exc) or type(exc).__name__, attempts=attempt)
                self._stop.wait(self.backoff.delay(attempt))
                continue
            with self._lock:
                self._channel = channel
            if self._stop.is_set():
                _close_quietly(channel)
                break
            attempt = 0
            self._set(status="connected", error=None, attempts=0, connects=self._state.connects + 1)
            try:
                error = self._pump(channel)
            except Exception as exc:  # a failing callback must not end the stream
                error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._channel = None
            _close_quietly(channel)
            if self._stop.is_set():
                break
            attempt += 1
            self._set(status="lost", error=error, attempts=attempt)
            self._stop.wait(self.backoff.delay(attempt))

    def _pump(self, channel: ByteChannel) -> str:
        """Deliver lines until the channel ends or goes silent too long; return why it stopped."""
        pending = b""
        heard = self._clock()
        while not self._stop.is_set():
            try:
                data = channel.read(self._poll_s)
            except Exception as exc:
                return f"read failed: {str(exc) or type(exc).__name__}"
            now = self._clock()
            if data is None:
                if self._stop.is_set():
                    return "stopped"
                try:
                    return channel.describe_end()
                except Exception:
                    return "the channel closed"
            if data:
                pending += data
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._on_line(self.host, raw.decode("utf-8", "replace").rstrip("\r"), now)
                heard = now
                self._set(status="connected", last_line_at=now)
                continue
            silent = now - heard
            if silent > self.lost_after_s:
                return f"no output for {silent:.0f}s (host frozen, overloaded or cut off?)"
            if silent > self.stale_after_s:
                self._set(status="stale")
        return "stopped"


def _close_quietly(channel: ByteChannel) -> None:
    with contextlib.suppress(Exception):
        channel.close()


# --------------------------------------------------------------------------------------- openers


class ProcessChannel:
    """A local process's stdout as a channel (this machine, or tests with real processes).

    Its stdin is a pipe held open until ``close()``, as sshd holds a session's: a command that
    watches its input for the end (the monitor's sampler) ends with the channel.
    """

    def __init__(self, command: str) -> None:
        self._proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    def read(self, timeout_s: float) -> bytes | None:
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        if not ready:
            return b""
        data = os.read(self._proc.stdout.fileno(), 65536)
        return data or None

    def describe_end(self) -> str:
        try:
            code = self._proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "the command closed its output"
        tail = self._proc.stderr.read().decode("utf-8", "replace").strip().splitlines()[-1:] \
            if self._proc.stderr else []
        return f"the command exited {code}" + (f": {tail[0]}" if tail else "")

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=1)
        for pipe in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()


class ProcessOpener:
    """Runs the command locally with ``/bin/sh -c`` (the host name only labels the stream)."""

    def __call__(self, host: str, command: str) -> ByteChannel:
        return ProcessChannel(command)


class SshChannel:
    """An SSH exec channel over its own connection (``clusterkit.cluster.remote.connect``)."""

    def __init__(self, conn: Connection, stack: contextlib.ExitStack[bool | None], channel: paramiko.Channel) -> None:
        self._conn = conn
        self._stack = stack
        self._channel = channel
        self._stderr = b""

    def read(self, timeout_s: float) -> bytes | None:
        channel = self._channel
        channel.settimeout(timeout_s)
        while channel.recv_stderr_ready():
            self._stderr = (self._stderr + channel.recv_stderr(4096))[-2000:]
        try:
            data = channel.recv(65536)
        except TimeoutError:
            return b""
        return data or None

    def describe_end(self) -> str:
        channel = self._channel
        status = channel.recv_exit_status() if channel.exit_status_ready() else None
        tail = self._stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        if status == -1:  # sshd sent no exit status: the command died of a signal
            what = "the remote command was killed (no exit status)"
        else:
            what = f"the remote command exited {status}" if status is not None else "the channel closed"
        return what + (f": {tail[0]}" if tail else "")

    def close(self) -> None:
        self._stack.close()


class SshOpener:
    """Opens ``command`` on ``host`` over SSH with clusterkit's host-key policy and settings.

    ``prepare(conn)`` runs first on each new connection (e.g. ship the agent there).
    """

    def __init__(self, settings: SshSettings, prepare: Callable[[Connection], object] | None = None,
                 keepalive_s: int = 5) -> None:
        self.settings = settings
        self.prepare = prepare
        self.keepalive_s = keepalive_s

    def __call__(self, host: str, command: str) -> ByteChannel:
        from clusterkit.cluster.remote import connect, explain

        stack = contextlib.ExitStack()
        try:
            conn = stack.enter_context(connect(host, self.settings))
            if self.prepare is not None:
                self.prepare(conn)
            transport = conn.client.get_transport()
            transport.set_keepalive(self.keepalive_s)
            channel = transport.open_session(timeout=self.settings.connect_timeout_s)
            channel.exec_command(command)
        except Exception as exc:
            stack.close()
            error = explain(exc, host, self.settings)
            raise ConnectionError(str(error) + (f" (fix: {error.fix})" if error.fix else "")) from None
        return SshChannel(conn, stack, channel)
