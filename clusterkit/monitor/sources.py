"""Where samples come from: live agents over SSH, this machine, or a recording; and the recorder.

A ``Source`` feeds a ``ClusterState``. The UI calls ``tick()`` on a timer (a replay at speed moves
its clock there, a live source sets ``now`` to the wall clock) and ``step()`` to move a stepped
replay one interval on. Live sources do their work in stream threads; nothing here blocks the caller.

Recording format (``--record FILE``; JSON lines): a header
``{"k": "header", "v": 2, "hosts": [...], "slots": {...}, "interval": 1.0}``, then in arrival order
``{"k": "sample", "h": HOST, "rx": HEAD_TIME, "s": SAMPLE}`` (``SAMPLE`` exactly as the agent sent
it), ``{"k": "link", "h": HOST, "rx": HEAD_TIME, "status": ..., "error": ..., "connects": N}`` and,
with ``--log``, ``{"k": "progress", "rx": HEAD_TIME, "p": PROGRESS}`` each time the job's progress
changed. Version 1 (no progress records) is read too. A recording whose last line is cut short (the
session that wrote it died mid-line) plays up to that line; ``ReplaySource.cut`` says where.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from clusterkit.cluster.remote.stream import ChannelOpener, LineStream, StreamState
from clusterkit.errors import InputError
from clusterkit.monitor.model import SampleError
from clusterkit.monitor.progress import LogFollower, Progress
from clusterkit.monitor.state import ClusterState
from clusterkit.node.collect.sampler import SAMPLE_MARKER

if TYPE_CHECKING:
    from clusterkit.cluster.nodes import HostStream

RECORDING_VERSION = 2
#: Recording versions this clusterkit plays back.
READABLE_VERSIONS = (1, 2)


class Source(Protocol):
    state: ClusterState
    #: True when the data is happening now (ages use the wall clock).
    live: bool
    #: What the viewer must know about the data (a recording cut short), or None.
    notice: str | None

    def start(self) -> None: ...
    def tick(self) -> None: ...
    def step(self) -> bool: ...
    def stop(self) -> None: ...


class Recorder:
    """Writes what a source receives as JSON lines; thread-safe, flushed every line."""

    def __init__(self, path: str | Path, hosts: list[str], slots: dict[str, int], interval_s: float,
                 started: float | None = None) -> None:
        """``InputError`` (a usage error: nothing has started yet) when ``path`` cannot be written."""
        # Open for the whole run (closed by close()), not per line.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise InputError(f"cannot write the recording: {exc.strerror or exc}", str(path)) from None
        self._file: IO[str] = os.fdopen(fd, "w", encoding="utf-8")
        self._lock = threading.Lock()
        self._write({"k": "header", "v": RECORDING_VERSION, "hosts": hosts, "slots": slots,
                     "interval": interval_s, "started": round(time.time() if started is None else started, 3)})

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)
                self._file.flush()

    def sample(self, host: str, raw: Any, received_at: float) -> None:
        self._write({"k": "sample", "h": host, "rx": round(received_at, 3), "s": raw})

    def link(self, state: StreamState) -> None:
        self._write({"k": "link", "h": state.host, "rx": round(state.since, 3), "status": state.status,
                     "error": state.error, "connects": state.connects})

    def progress(self, progress: Progress, received_at: float) -> None:
        self._write({"k": "progress", "rx": round(received_at, 3), "p": progress.to_record()})

    def close(self) -> None:
        with self._lock:
            self._file.close()


# ------------------------------------------------------------------------------------------ replay


@dataclass(frozen=True)
class Recording:
    header: dict[str, Any]
    #: Samples, link changes and progress, by the head's time of arrival.
    records: list[dict[str, Any]]
    #: Where the recording was cut short (``FILE:LINE: ...``), or None when it is whole.
    cut: str | None = None


def _is_record(record: dict[str, Any]) -> bool:
    kind, at = record.get("k"), record.get("rx")
    if not isinstance(at, (int, float)) or isinstance(at, bool):
        return False
    return (kind in ("sample", "link") and isinstance(record.get("h"), str)) or kind == "progress"


def load_recording(path: str | Path) -> Recording:
    """A recording's header and records; ``InputError`` names file:line on a bad line.

    A last line that is not whole JSON and has no line end is where the recording was cut (its writer
    died mid-line): everything before it is kept and ``cut`` says so. Any other bad line is an error.
    """
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    cut: str | None = None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"cannot read the recording: {exc.strerror}", str(path)) from None
    lines = text.splitlines()
    # Only an unfinished last line can be a cut (a crash may leave NULs after it).
    unfinished = 0 if text.rstrip("\0").endswith("\n") else len(lines)
    for number, line in enumerate(lines, 1):
        if not line.strip(" \t\0"):
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            if number == unfinished:
                cut = (f"{path}:{number}: the recording ends in the middle of this line (its writer stopped "
                       f"mid-line): played up to line {number - 1}")
                break
            raise InputError(f"not a JSON line ({exc})", str(path), number) from None
        kind = record.get("k") if isinstance(record, dict) else None
        if header is None:
            if kind != "header":
                raise InputError("a recording starts with a header line ({\"k\": \"header\", ...}); "
                                 "this is not a clusterkit monitor recording", str(path), number)
            if record.get("v") not in READABLE_VERSIONS:
                raise InputError(f"recording format {record.get('v')!r}, this clusterkit reads "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}", str(path), number)
            header = record
        elif _is_record(record):
            records.append(record)
        else:
            raise InputError(f"unknown record {str(record)[:60]!r} (expected k=sample or k=link with h and rx, "
                             "or k=progress with rx)", str(path), number)
    if header is None:
        raise InputError("empty recording" + (" (cut short in its header line)" if cut else ""), str(path))
    records.sort(key=lambda r: float(r["rx"]))
    return Recording(header, records, cut)


class ReplaySource:
    """A recording played into a ``ClusterState``: at ``speed`` x real time on ``tick()``, or one
    interval per ``step()`` when ``speed`` is 0 (stepped: tests and snapshots)."""

    live = False

    def __init__(self, path: str | Path, speed: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        recording = load_recording(path)
        self.header, self._records = recording.header, recording.records
        #: Where the recording was cut short, or None.
        self.cut = self.notice = recording.cut
        hosts = [str(h) for h in self.header.get("hosts") or []]
        slots = {str(k): int(v) for k, v in (self.header.get("slots") or {}).items()}
        self.interval_s = float(self.header.get("interval") or 1.0)
        self.state = ClusterState(hosts, slots, self.interval_s)
        self.speed = speed
        self._clock = clock
        self._next = 0
        self.start_time = float(self._records[0]["rx"]) if self._records else 0.0
        self.end_time = float(self._records[-1]["rx"]) if self._records else 0.0
        self.position = self.start_time - self.interval_s
        self._started_at: float | None = None

    @property
    def finished(self) -> bool:
        return self._next >= len(self._records)

    def start(self) -> None:
        self._started_at = self._clock()

    def stop(self) -> None:
        return None

    def seek(self, position: float) -> None:
        """Apply every record up to recording time ``position`` (forward only)."""
        while self._next < len(self._records) and float(self._records[self._next]["rx"]) <= position:
            self._apply(self._records[self._next])
            self._next += 1
        self.position = position
        self.state.set_now(position)

    def advance(self, seconds: float) -> None:
        self.seek(self.position + seconds)

    def step(self) -> bool:
        if self.finished:
            return False
        self.advance(self.interval_s)
        return True

    def tick(self) -> None:
        if self.speed > 0 and self._started_at is not None and not self.finished:
            self.seek(self.start_time + (self._clock() - self._started_at) * self.speed)

    def _apply(self, record: dict[str, Any]) -> None:
        if record["k"] == "progress":
            self.state.apply_progress(Progress.from_record(record.get("p")))
            return
        host, at = str(record["h"]), float(record["rx"])
        if record["k"] == "sample":
            self.state.apply_raw(host, record.get("s"), at)
        else:
            self.state.apply_link(StreamState(host, record.get("status", "lost"), at, error=record.get("error"),
                                              connects=int(record.get("connects") or 0)))


# -------------------------------------------------------------------------------------------- live


def stream_args(interval_s: float, slow_every: int = 0) -> list[str]:
    """The agent's arguments for the monitor's sampler (``agent stream ...``)."""
    return ["stream", "--interval", f"{interval_s:g}", "--slow-every", str(int(slow_every))]


#: Builds one stream per host that feeds the two callbacks: ``Nodes.agent_streams`` for live nodes.
StreamFactory = Callable[[Callable[[str, str, float], None], Callable[[StreamState], None]], list["HostStream"]]


def line_streams(hosts: list[str], opener: ChannelOpener, command: str, *, stale_after_s: float,
                 lost_after_s: float, clock: Callable[[], float] = time.time) -> StreamFactory:
    """A stream factory over any channel opener (tests, and transports that open channels themselves)."""

    def make(on_line: Callable[[str, str, float], None], on_state: Callable[[StreamState], None]) -> list[HostStream]:
        return [LineStream(h, command, opener, on_line, on_state, stale_after_s=stale_after_s,
                           lost_after_s=lost_after_s, clock=clock) for h in hosts]

    return make


class LiveSource:
    """One ``LineStream`` per host; samples and link states go into the state (and the recorder), and
    the job's progress from its log (``log``), read on every ``tick()``."""

    live = True
    notice: str | None = None

    def __init__(self, hosts: list[str], slots: dict[str, int], streams: StreamFactory, interval_s: float, *,
                 recorder: Recorder | None = None, log: LogFollower | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = ClusterState(hosts, slots, interval_s)
        self.recorder = recorder
        self.log = log
        self._clock = clock
        self.streams = streams(self._on_line, self._on_state)

    def start(self) -> None:
        self.state.set_now(self._clock())
        self._read_log()
        for stream in self.streams:
            stream.start()

    def tick(self) -> None:
        self.state.set_now(self._clock())
        self._read_log()

    def _read_log(self) -> None:
        if self.log is None:
            return
        progress = self.log.poll()
        if progress != self.state.progress:
            if self.recorder is not None:
                self.recorder.progress(progress, self._clock())
            self.state.apply_progress(progress)

    def step(self) -> bool:
        return False

    def stop(self, timeout_s: float = 1.0) -> None:
        """Every stream flagged and closed first, then joined under one deadline: a frozen host
        (a thread stuck in connect) costs at most ``timeout_s`` in all."""
        for stream in self.streams:
            stream.request_stop()
        deadline = time.monotonic() + timeout_s
        for stream in self.streams:
            stream.stop(timeout_s=max(0.0, deadline - time.monotonic()))
        if self.recorder is not None:
            self.recorder.close()

    def _on_line(self, host: str, line: str, received_at: float) -> None:
        if not line.startswith(SAMPLE_MARKER):
            return  # a login banner or a warning: not ours
        try:
            raw = json.loads(line[len(SAMPLE_MARKER):])
        except ValueError as exc:
            with self.state.lock:
                self.state.node(host).error = str(SampleError(f"sample line is not JSON: {exc}"))
            return
        if self.recorder is not None:
            self.recorder.sample(host, raw, received_at)
        self.state.apply_raw(host, raw, received_at)

    def _on_state(self, state: StreamState) -> None:
        # "stopped" is this monitor ending, not a node: recorded, it would turn a node that was DOWN at
        # the end of a recording into a merely stale one on replay.
        if self.recorder is not None and state.status != "stopped":
            self.recorder.link(state)
        self.state.apply_link(state)
