"""A job that stopped making progress: no new step in its log for several times the usual silence.

Idleness is no signal (a rank waiting in an NCCL collective keeps its GPU at 100 %); only progress
tells. The usual silence is the median gap between recent lines that moved the step (a job printing
every 10 steps: 10 step times), else the step time; a stall is a silence of ``multiple`` times that,
and never less than ``floor_s`` (a first slow step, a checkpoint, an evaluation). Pure: the clock is
passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clusterkit.monitor.progress import Progress

#: A silence this many times the usual one is a stall.
DEFAULT_MULTIPLE = 5.0
#: ... and never a silence shorter than this.
DEFAULT_FLOOR_S = 30.0


@dataclass(frozen=True)
class Stall:
    """The job's last step, how long ago it moved, since when, and the silence judged a stall."""

    step: int
    seconds: float
    since: float
    threshold_s: float

    def describe(self) -> str:
        return f"job stalled at step {self.step} for {self.seconds:.0f} s (stall after {self.threshold_s:.0f} s)"

    def to_record(self) -> dict[str, Any]:
        return {"step": self.step, "seconds": round(self.seconds, 1), "since": self.since,
                "threshold_s": round(self.threshold_s, 1)}


def stall_threshold(progress: Progress, multiple: float = DEFAULT_MULTIPLE, floor_s: float = DEFAULT_FLOOR_S) -> float:
    """The silence after which this job counts as stalled: ``max(multiple x usual gap, floor_s)``."""
    usual = max((v for v in (progress.line_gap_s, progress.step_time_s) if v is not None and v > 0), default=None)
    return floor_s if usual is None else max(multiple * usual, floor_s)


def detect_stall(progress: Progress | None, now: float, multiple: float = DEFAULT_MULTIPLE,
                 floor_s: float = DEFAULT_FLOOR_S) -> Stall | None:
    """The stall, if the log's step has not moved for the threshold by ``now``; None before a first step,
    or while the log cannot be read (its error is shown instead)."""
    if progress is None or progress.step is None or progress.updated_at is None or progress.error:
        return None
    threshold = stall_threshold(progress, multiple, floor_s)
    silent = now - progress.updated_at
    if silent < threshold:
        return None
    return Stall(progress.step, silent, progress.updated_at, threshold)
