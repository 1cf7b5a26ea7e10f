"""The job's own progress from its log (``monitor --log FILE``): step, loss, samples/s and step time.

Read from DeepSpeed's progress lines (``step=N, skipped=S, lr=...`` from ``steps_per_print``;
``epoch=E/micro_step=M/global_step=G, RunningAvgSamplesPerSec=X, CurrSamplesPerSec=Y, ...`` from its
throughput timer), the HF Trainer's ``{'loss': 1.2, ...}`` dicts, and any ``loss 0.123``/``loss=0.123``.
The file is followed like ``tail -f``: each ``poll()`` reads what was appended since the last.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

_DS_STEP = re.compile(r"\bstep=(\d+), skipped=(\d+)")
_DS_SPEED = re.compile(r"global_step=(\d+), RunningAvgSamplesPerSec=([\d.eE+-]+), CurrSamplesPerSec=([\d.eE+-]+)")
_HF_LOSS = re.compile(r"""['"]loss['"]:\s*([\d.eE+-]+)""")
_LOSS = re.compile(r"\bloss[\s=:]+([\d.eE+-]+)", re.IGNORECASE)
_STEP = re.compile(r"\bstep[\s=:]+(\d+)\b", re.IGNORECASE)
_STEP_TIME = re.compile(r"\((\d+(?:\.\d+)?) ?s\)")


@dataclass(frozen=True)
class Progress:
    step: int | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    avg_samples_per_s: float | None = None
    step_time_s: float | None = None
    skipped: int | None = None
    #: When the last line that moved the step was read (head clock).
    updated_at: float | None = None

    def describe(self) -> str:
        parts = [f"step {self.step}" if self.step is not None else "no step yet"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.samples_per_s is not None:
            parts.append(f"{self.samples_per_s:.1f} samples/s")
        if self.step_time_s is not None:
            parts.append(f"{self.step_time_s:.3g} s/step")
        return ", ".join(parts)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_line(line: str, progress: Progress, at: float) -> Progress:
    """``progress`` with what ``line`` says (unchanged if it says nothing we know)."""
    changes: dict[str, object] = {}
    step: int | None = None
    if (speed := _DS_SPEED.search(line)) is not None:
        step = int(speed.group(1))
        changes.update(avg_samples_per_s=_float(speed.group(2)), samples_per_s=_float(speed.group(3)))
    elif (ds_step := _DS_STEP.search(line)) is not None:
        step = int(ds_step.group(1))
        changes["skipped"] = int(ds_step.group(2))
    elif (plain := _STEP.search(line)) is not None:
        step = int(plain.group(1))
    loss = _HF_LOSS.search(line) or _LOSS.search(line)
    if loss is not None and (value := _float(loss.group(1))) is not None:
        changes["loss"] = value
    if step is not None:
        changes.update(step=step, updated_at=at)
        if (took := _STEP_TIME.search(line)) is not None:
            changes["step_time_s"] = float(took.group(1))
        elif progress.step is not None and progress.updated_at is not None and step > progress.step:
            changes["step_time_s"] = (at - progress.updated_at) / (step - progress.step)
    return replace(progress, **changes) if changes else progress  # type: ignore[arg-type]


class LogFollower:
    """Follows a log file from its start; a missing file is a state (``error``), not a crash."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.progress = Progress()
        self.error: str | None = None
        self._offset = 0
        self._pending = ""
        self._clock = clock

    def poll(self) -> Progress:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(0, 2)
                if f.tell() < self._offset:  # truncated or replaced: start over
                    self._offset, self._pending = 0, ""
                f.seek(self._offset)
                chunk = f.read(1 << 20)
                self._offset = f.tell()
        except OSError as exc:
            self.error = f"cannot read {self.path}: {exc.strerror}"
            return self.progress
        self.error = None
        *lines, self._pending = (self._pending + chunk).split("\n")
        now = self._clock()
        for line in lines:
            self.progress = parse_line(line, self.progress, now)
        return self.progress
