"""The job's own progress from its log (``monitor --log FILE``): step, loss, samples/s and step time.

Read from DeepSpeed's progress lines (``step=N, skipped=S, lr=...`` every ``steps_per_print`` steps,
through its logger, which stamps each line with the time it was written; ``epoch=E/micro_step=M/
global_step=G, RunningAvgSamplesPerSec=X, CurrSamplesPerSec=Y, ...`` from its throughput timer), tqdm
bars (``50/1000 [00:50<15:50, 1.00s/it]``, as the HF Trainer draws them), the HF Trainer's
``{'loss': 1.2, ...}`` dicts, and a plain script's ``step 12``/``loss 0.123``/``(0.25 s)``.

The time per step is a time the log gives: one the job printed for a step (``(0.25 s)``, tqdm's
``s/it``), else the pace between the timestamps of its step lines, else the pace between step lines
read at different times while following. Lines read together (the log's backlog when following
starts, a burst) carry no pace of their own: never a step time from them, so never ``0 s/step``.
The file is followed like ``tail -f``: each ``poll()`` reads what was appended since the last.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

_DS_STEP = re.compile(r"\bstep=(\d+), skipped=(\d+)")
_DS_SPEED = re.compile(r"global_step=(\d+), RunningAvgSamplesPerSec=([\d.eE+-]+), CurrSamplesPerSec=([\d.eE+-]+)")
_TQDM = re.compile(r"(\d+)/\d+ \[[\d:]+<[\d:?]+,\s*(\d+(?:\.\d+)?)(s/it|it/s)")
_HF_LOSS = re.compile(r"""['"]loss['"]:\s*([\d.eE+-]+)""")
_LOSS = re.compile(r"\bloss[\s=:]+([\d.eE+-]+)", re.IGNORECASE)
_STEP = re.compile(r"\bstep[\s=:]+(\d+)\b", re.IGNORECASE)
_STEP_TIME = re.compile(r"\((\d+(?:\.\d+)?) ?s\)")
#: A logger's timestamp near the start of a line (DeepSpeed's ``[2026-05-28 20:26:40,121]``, ISO 8601).
_STAMP = re.compile(r"(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)(?:[,.](\d{1,6}))?")
#: Step lines over which the pace is measured (the first and the last of them).
PACE_WINDOW = 4
#: Step-moving lines whose gaps give the usual silence between them (their median).
GAP_WINDOW = 6


@dataclass(frozen=True)
class Progress:
    step: int | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    avg_samples_per_s: float | None = None
    step_time_s: float | None = None
    #: Where the step time comes from: "printed" (by the job, per step), "timestamps" (the pace between
    #: the log's own timestamps), "arrival" (the pace at which step lines arrived while followed).
    step_time_from: str | None = None
    skipped: int | None = None
    #: When the line that moved the step was written, as well as the head knows (its clock): when it was
    #: read while following, or the file's last write for lines already there when following began.
    updated_at: float | None = None
    #: Why the log cannot be read now (the values above are the last read).
    error: str | None = None
    #: The median time between recent lines that moved the step (a job printing every 10 steps: 10 step
    #: times): how long a silence is normal. By the log's timestamps, else by when lines arrived.
    line_gap_s: float | None = None

    def describe(self) -> str:
        parts = [f"step {self.step}" if self.step is not None else "no step yet"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.samples_per_s is not None:
            parts.append(f"{self.samples_per_s:.1f} samples/s")
        if self.step_time_s is not None:
            parts.append(f"{self.step_time_s:.3g} s/step")
        text = ", ".join(parts)
        return f"{self.error} (last read: {text})" if self.error else text

    def to_record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_record(cls, raw: Any) -> Progress:
        """A recorded progress (``to_record``); fields of the wrong type or unknown are left out."""
        if not isinstance(raw, dict):
            return cls()
        known: dict[str, Any] = {}
        for f in fields(cls):
            value = raw.get(f.name)
            if isinstance(value, bool):
                continue
            if f.name in ("step", "skipped"):
                if isinstance(value, int):
                    known[f.name] = value
            elif f.name in ("step_time_from", "error"):
                if isinstance(value, str):
                    known[f.name] = value
            elif isinstance(value, (int, float)):
                known[f.name] = float(value)
        return cls(**known)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def line_stamp(line: str) -> float | None:
    """The time a logger wrote on the line (seconds, local time), or None."""
    found = _STAMP.search(line, 0, 80)
    if found is None:
        return None
    day, clock, fraction = found.groups()
    try:
        stamp = datetime.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S").timestamp()
    except (ValueError, OverflowError):
        return None
    return stamp + (float(f"0.{fraction}") if fraction else 0.0)


class ProgressParser:
    """Progress from a log's lines in order; keeps the step lines' times to measure the pace."""

    def __init__(self) -> None:
        self.progress = Progress()
        self._printed = False  # the job prints its own step times: no pace is measured
        # (step, time) of recent step lines: by the log's timestamps, and by when they were read.
        self._stamped: deque[tuple[int, float]] = deque(maxlen=PACE_WINDOW)
        self._arrived: deque[tuple[int, float]] = deque(maxlen=PACE_WINDOW)
        # When recent lines that moved the step were written (stamped, or read live), for the usual gap.
        self._moves: deque[float] = deque(maxlen=GAP_WINDOW)

    def feed(self, line: str, written_at: float, read_live: bool) -> Progress:
        """``line``, written at ``written_at`` (head clock, as well as known); ``read_live``: it was read
        while following (its read time is when it appeared), not found in a backlog."""
        changes: dict[str, object] = {}
        step: int | None = None
        printed: float | None = None
        if (speed := _DS_SPEED.search(line)) is not None:
            step = int(speed.group(1))
            changes.update(avg_samples_per_s=_float(speed.group(2)), samples_per_s=_float(speed.group(3)))
        elif (ds_step := _DS_STEP.search(line)) is not None:
            step = int(ds_step.group(1))
            changes["skipped"] = int(ds_step.group(2))
        elif (bar := _TQDM.search(line)) is not None:
            step, rate = int(bar.group(1)), float(bar.group(2))
            if rate > 0:
                printed = rate if bar.group(3) == "s/it" else 1.0 / rate
        elif (plain := _STEP.search(line)) is not None:
            step = int(plain.group(1))
        loss = _HF_LOSS.search(line) or _LOSS.search(line)
        if loss is not None and (value := _float(loss.group(1))) is not None:
            changes["loss"] = value
        if step is not None:
            if printed is None and (took := _STEP_TIME.search(line)) is not None:
                printed = float(took.group(1))
            changes.update(self._timed_step(step, line, written_at, read_live, printed))
        if changes:
            self.progress = replace(self.progress, **changes)  # type: ignore[arg-type]
        return self.progress

    def _timed_step(self, step: int, line: str, written_at: float, read_live: bool,
                    printed: float | None) -> dict[str, object]:
        previous = self.progress.step
        if previous is not None and step < previous:  # a new run in the same log: its own pace
            self._stamped.clear()
            self._arrived.clear()
        changes: dict[str, object] = {"step": step}
        stamp = line_stamp(line)
        if previous is None or step != previous:
            changes["updated_at"] = written_at
            moved_at = stamp if stamp is not None else (written_at if read_live else None)
            if moved_at is not None and (not self._moves or moved_at > self._moves[-1]):
                self._moves.append(moved_at)
                changes["line_gap_s"] = _median_gap(self._moves)
        if printed is not None:
            self._printed = True
            changes.update(step_time_s=printed, step_time_from="printed")
            return changes
        if stamp is not None:
            _mark(self._stamped, step, stamp)
        elif read_live:
            _mark(self._arrived, step, written_at)
        if not self._printed:
            for marks, source in ((self._stamped, "timestamps"), (self._arrived, "arrival")):
                pace = _pace(marks)
                if pace is not None:
                    changes.update(step_time_s=pace, step_time_from=source)
                    break
        return changes


def _mark(marks: deque[tuple[int, float]], step: int, at: float) -> None:
    """Note that ``step`` was reached at ``at``: only a later step at a later time times anything."""
    if marks and (step <= marks[-1][0] or at <= marks[-1][1]):
        return
    marks.append((step, at))


def _median_gap(times: deque[float]) -> float | None:
    gaps = sorted(b - a for a, b in zip(times, list(times)[1:], strict=False))
    return gaps[len(gaps) // 2] if gaps else None


def _pace(marks: deque[tuple[int, float]]) -> float | None:
    if len(marks) < 2:
        return None
    (first_step, first_at), (last_step, last_at) = marks[0], marks[-1]
    return (last_at - first_at) / (last_step - first_step)


def parse_line(line: str, progress: Progress, at: float) -> Progress:
    """``progress`` with what the single ``line`` says (no pace: that needs the lines before it)."""
    parser = ProgressParser()
    parser.progress = progress
    return parser.feed(line, at, read_live=False)


class LogFollower:
    """Follows a log file from its start; a file that cannot be read is an ``error`` in the progress."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.parser = ProgressParser()
        self._offset = 0
        self._pending = ""
        self._clock = clock
        self._followed = False  # past the backlog: what is read now was written since the last poll

    @property
    def progress(self) -> Progress:
        return self.parser.progress

    def check(self) -> str | None:
        """Why the log cannot be followed (missing, a directory, unreadable), or None."""
        try:
            with open(self.path, "rb"):
                return None
        except OSError as exc:
            return f"cannot read {self.path}: {exc.strerror or exc}"

    def poll(self) -> Progress:
        now = self._clock()
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                info = os.fstat(f.fileno())
                size, written = info.st_size, min(now, info.st_mtime)
                if size < self._offset:  # truncated or replaced: start over
                    self._offset, self._pending = 0, ""
                f.seek(self._offset)
                chunk = f.read(1 << 20)
                self._offset = f.tell()
        except OSError as exc:
            error = f"cannot read {self.path}: {exc.strerror or exc}"
            if error != self.parser.progress.error:
                self.parser.progress = replace(self.parser.progress, error=error)
            return self.parser.progress
        if self.parser.progress.error is not None:
            self.parser.progress = replace(self.parser.progress, error=None)
        # tqdm redraws its bar with carriage returns: each redraw is a line of its own.
        *lines, self._pending = re.split(r"\r\n|\r|\n", self._pending + chunk)
        live = self._followed
        for line in lines:
            self.parser.feed(line, now if live else written, read_live=live)
        if len(chunk) < 1 << 20:
            self._followed = True  # the backlog is read: from now on lines are read as they come
        return self.parser.progress
