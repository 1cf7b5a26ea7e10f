"""Where the monitor draws its lines: alert thresholds and what each alert says.

The UI layer's own judgement of the monitor's plain summaries (``clusterkit.monitor.views``); no
Textual import, so ``monitor --once --json`` uses the same alerts without starting a UI.
Override any threshold with ``--alert NAME=VALUE`` (``clusterkit monitor --help`` lists them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from clusterkit.errors import UsageError
from clusterkit.monitor.baseline import deviations
from clusterkit.monitor.stall import DEFAULT_FLOOR_S, DEFAULT_MULTIPLE, Stall, detect_stall
from clusterkit.monitor.state import ClusterState
from clusterkit.monitor.views import NodeSummary, RankRow, Straggler

#: Clock-event reasons that mean the hardware itself is slowing the GPU down.
HARDWARE_REASONS = frozenset({"hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"})


@dataclass(frozen=True)
class Thresholds:
    #: A node with no sample for this long is stale (default: 3 intervals).
    stale_after_s: float = 3.0
    #: A silent channel is closed and reopened after this long (default: 8 intervals, at least 5 s).
    lost_after_s: float = 8.0
    temp_warn_c: float = 83.0
    temp_crit_c: float = 90.0
    #: Power draw at or above this share of the enforced limit.
    power_warn_frac: float = 0.98
    gpu_mem_warn_frac: float = 0.95
    ram_warn_frac: float = 0.95
    #: A GPU (or rank's CPU) under this share of its peers' median is a straggler.
    straggler_ratio: float = 0.6
    #: Samples averaged before comparing peers.
    straggler_window: int = 10
    #: A rank with no CPU time for this long is marked stalled.
    stall_after_s: float = 30.0
    #: The job (``--log``) is stalled when no step moves for this many times its usual gap between steps...
    job_stall_multiple: float = DEFAULT_MULTIPLE
    #: ... and at least this long.
    job_stall_floor_s: float = DEFAULT_FLOOR_S

    @classmethod
    def for_interval(cls, interval_s: float) -> Thresholds:
        return cls(stale_after_s=3 * interval_s, lost_after_s=max(5.0, 8 * interval_s))

    def with_overrides(self, items: list[str]) -> Thresholds:
        """``["temp_warn_c=80", ...]`` applied; a bad name or value is a UsageError naming both."""
        names = {f.name: f.type for f in dataclasses.fields(self)}
        changes: dict[str, float | int] = {}
        for item in items:
            name, sep, text = item.partition("=")
            if not sep or name not in names:
                raise UsageError(f"--alert {item!r}: expected NAME=VALUE with NAME one of {', '.join(names)}")
            try:
                changes[name] = int(text) if names[name] in (int, "int") else float(text)
            except ValueError:
                raise UsageError(f"--alert {item!r}: {text!r} is not a number") from None
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Alert:
    level: str  # "crit" or "warn"
    host: str
    gpu: int | None
    text: str


def _pct(value: float, total: float) -> str:
    return f"{100 * value / total:.0f}%"


def node_alerts(summary: NodeSummary, state: ClusterState, t: Thresholds) -> list[Alert]:
    host = summary.host
    if summary.status in ("down", "stale"):
        age = f"last sample {summary.age_s:.0f}s ago" if summary.age_s is not None else "never heard from"
        return [Alert("crit", host, None, f"{summary.status}: {summary.why or 'no samples'} ({age})")]
    alerts: list[Alert] = []
    view = state.nodes[host]
    sample = view.last
    if sample is None:
        return alerts
    if summary.new_ecc:
        alerts.append(Alert("crit", host, None, f"{summary.new_ecc} new uncorrected ECC errors"))
    for _, xid in view.xids[-3:]:
        alerts.append(Alert("crit", host, None, f"XID {xid.code} on {xid.bus_id}: {xid.message}"))
    if sample.gpu_na and not sample.gpu_na.startswith("NVML not found"):
        alerts.append(Alert("crit", host, None, sample.gpu_na))
    if summary.gpus_expected and sample.gpus and summary.gpus_up < summary.gpus_expected:
        alerts.append(Alert("crit", host, None, f"{summary.gpus_up}/{summary.gpus_expected} GPUs answering"))
    for gpu in sample.gpus:
        i = gpu.index
        if gpu.temp_c is not None and gpu.temp_c >= t.temp_warn_c:
            level = "crit" if gpu.temp_c >= t.temp_crit_c else "warn"
            alerts.append(Alert(level, host, i, f"GPU{i} at {gpu.temp_c:.0f}°C"))
        if gpu.power_w is not None and gpu.power_limit_w and gpu.power_w >= t.power_warn_frac * gpu.power_limit_w:
            alerts.append(Alert("warn", host, i, f"GPU{i} power {gpu.power_w:.0f}/{gpu.power_limit_w:.0f} W"))
        if gpu.mem_used is not None and gpu.mem_total and gpu.mem_used >= t.gpu_mem_warn_frac * gpu.mem_total:
            alerts.append(Alert("warn", host, i, f"GPU{i} memory {_pct(gpu.mem_used, gpu.mem_total)} used"))
        slow = [r for r in gpu.reasons or () if r in HARDWARE_REASONS or r.startswith("sw_")]
        if slow:
            level = "crit" if any(r in HARDWARE_REASONS for r in slow) else "warn"
            alerts.append(Alert(level, host, i, f"GPU{i} throttled: {', '.join(slow)}"))
        if gpu.util_pct is None and "util" in gpu.na:
            alerts.append(Alert("warn", host, i, f"GPU{i} not readable: {gpu.na['util']}"))
    if summary.ram_used is not None and summary.ram_total and summary.ram_used >= t.ram_warn_frac * summary.ram_total:
        alerts.append(Alert("warn", host, None, f"RAM {_pct(summary.ram_used, summary.ram_total)} used"))
    return alerts


#: The host of alerts about the job as a whole.
JOB_HOST = "job"


def job_stall(state: ClusterState, ranks: list[RankRow], t: Thresholds) -> Stall | None:
    """The job's stall by its log; none once every rank seen has exited (a finished job is silent too)."""
    if ranks and all(r.status == "exited" for r in ranks):
        return None
    return detect_stall(state.progress, state.now, t.job_stall_multiple, t.job_stall_floor_s)


def all_alerts(summaries: list[NodeSummary], ranks: list[RankRow], stragglers: list[Straggler],
               state: ClusterState, t: Thresholds) -> list[Alert]:
    alerts = [a for s in summaries for a in node_alerts(s, state, t)]
    stall = job_stall(state, ranks, t)
    if stall is not None:
        alerts.append(Alert("crit", JOB_HOST, None, stall.describe()))
    alerts += [Alert("warn", s.host, s.gpu, "straggler: " + s.describe()) for s in stragglers]
    for row in ranks:
        if row.status == "exited":
            alerts.append(Alert("crit", row.host, row.gpu, f"rank {row.rank} (pid {row.pid}) exited"))
        elif row.status == "stalled":
            alerts.append(Alert("warn", row.host, row.gpu, f"rank {row.rank} (pid {row.pid}) stalled: no CPU "
                                                           f"for {t.stall_after_s:.0f}s+"))
    return alerts + baseline_alerts(state)


def baseline_alerts(state: ClusterState) -> list[Alert]:
    """GPUs whose live sample is outside what the saved run of ``monitor --baseline`` recorded for them."""
    if state.baseline is None:
        return []
    alerts = []
    with state.lock:
        for host, view in state.nodes.items():
            if view.last is not None:
                alerts += [Alert("warn", host, gpu, text) for gpu, text in deviations(state.baseline, host, view.last)]
    return alerts
