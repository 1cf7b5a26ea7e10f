"""Plain summaries of a ``ClusterState`` for any renderer: a row per node, per GPU, per rank, stragglers.

Pure functions of the state and the numbers passed in; where a line is drawn (stale after how long,
how far below its peers a GPU must sit) is the caller's choice (``clusterkit.ui.tui.thresholds``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from clusterkit.monitor.model import GpuSample, NodeSample
from clusterkit.monitor.state import ClusterState, NodeView

#: Clock-event reasons that say nothing is wrong.
BENIGN_REASONS = frozenset({"gpu_idle", "applications_clocks_setting", "display_clocks_setting", "sync_boost"})


@dataclass(frozen=True)
class NodeSummary:
    host: str
    #: up, stale (no sample lately), down (link lost), waiting (nothing heard yet)
    status: str
    age_s: float | None
    why: str | None
    gpus_up: int
    gpus_expected: int | None
    worst_temp_c: float | None
    power_w: float | None
    power_limit_w: float | None
    util_min: float | None
    util_avg: float | None
    util_max: float | None
    gpu_mem_used: int | None
    gpu_mem_total: int | None
    throttle: tuple[str, ...]
    new_ecc: int
    new_xid: int
    cpu_pct: float | None
    ncpu: int
    ram_used: int | None
    ram_total: int | None
    net_rx_bps: float | None
    net_tx_bps: float | None
    ranks: int
    restarts: int
    missed: int
    gpu_na: str | None


def node_status(view: NodeView, now: float, stale_after_s: float) -> tuple[str, str | None]:
    link = view.link
    if link is not None and link.status in ("lost", "connecting") and (view.last is not None or link.error):
        return "down", link.error
    if view.last is None or view.received_at is None:
        return "waiting", view.error
    if now - view.received_at > stale_after_s or (link is not None and link.status == "stale"):
        return "stale", f"no sample for {now - view.received_at:.0f}s"
    return "up", view.error


def _stat(values: list[float], func: Callable[[list[float]], float]) -> float | None:
    return func(values) if values else None


def _sum_known(values: Iterable[float | int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def summarize_node(view: NodeView, now: float, stale_after_s: float) -> NodeSummary:
    status, why = node_status(view, now, stale_after_s)
    sample = view.last
    gpus = sample.gpus if sample else ()
    utils = [g.util_pct for g in gpus if g.util_pct is not None]
    temps = [g.temp_c for g in gpus if g.temp_c is not None]
    reasons = sorted({r for g in gpus for r in (g.reasons or ()) if r not in BENIGN_REASONS})
    return NodeSummary(
        host=view.host, status=status, why=why,
        age_s=None if view.received_at is None else max(0.0, now - view.received_at),
        gpus_up=sum(1 for g in gpus if g.util_pct is not None), gpus_expected=view.slots,
        worst_temp_c=max(temps) if temps else None,
        power_w=_sum_known(g.power_w for g in gpus), power_limit_w=_sum_known(g.power_limit_w for g in gpus),
        util_min=_stat(utils, min), util_avg=_stat(utils, statistics.fmean), util_max=_stat(utils, max),
        gpu_mem_used=_int_or_none(_sum_known(g.mem_used for g in gpus)),
        gpu_mem_total=_int_or_none(_sum_known(g.mem_total for g in gpus)),
        throttle=tuple(reasons), new_ecc=view.new_ecc(sample) if sample else 0, new_xid=len(view.xids),
        cpu_pct=sample.cpu_pct if sample else None, ncpu=sample.ncpu if sample else 0,
        ram_used=(sample.mem_total - sample.mem_available)
        if sample and sample.mem_total is not None and sample.mem_available is not None else None,
        ram_total=sample.mem_total if sample else None,
        net_rx_bps=sample.net_rx_bps if sample else None, net_tx_bps=sample.net_tx_bps if sample else None,
        ranks=len(sample.ranks) if sample else 0, restarts=view.restarts, missed=view.missed,
        gpu_na=sample.gpu_na if sample else None)


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def summarize_cluster(state: ClusterState, stale_after_s: float) -> list[NodeSummary]:
    with state.lock:
        return [summarize_node(state.nodes[h], state.now, stale_after_s) for h in state.hosts]


# ------------------------------------------------------------------------------------------- ranks


@dataclass(frozen=True)
class RankRow:
    job: str
    rank: int
    local_rank: int
    world_size: int | None
    host: str
    pid: int
    gpu: int | None
    gpu_mem: int | None
    cpu_pct: float | None
    rss: int
    proc_state: str
    #: running, stalled (no CPU for a while), exited (gone while its node kept reporting), node-down
    status: str
    cmd: str


def rank_rows(state: ClusterState, stale_after_s: float, stall_after_s: float) -> list[RankRow]:
    rows = []
    with state.lock:
        for (job, rank), seen in sorted(state.ranks.items()):
            view = state.nodes[seen.host]
            node, _ = node_status(view, state.now, stale_after_s)
            s = seen.sample
            if node in ("down", "stale"):
                status = "node-down"
            elif (view.received_at is not None and seen.last_seen < view.received_at) or s.state in ("Z", "X"):
                status = "exited"
            elif seen.idle_s >= stall_after_s:
                status = "stalled"
            else:
                status = "running"
            rows.append(RankRow(job, rank, s.local_rank, s.world_size, seen.host, s.pid, s.gpu, s.gpu_mem,
                                s.cpu_pct, s.rss, s.state, status, s.cmd))
    return rows


# -------------------------------------------------------------------------------------- stragglers


@dataclass(frozen=True)
class Straggler:
    """One GPU (or rank, ``gpu`` None) sitting far below its peers on ``metric`` over the window."""

    host: str
    gpu: int | None
    rank: int | None
    metric: str
    value: float
    peer_median: float

    def describe(self) -> str:
        where = f"{self.host} GPU{self.gpu}" if self.gpu is not None else f"rank {self.rank} on {self.host}"
        return f"{where}: {self.metric} {self.value:.0f} vs peers' median {self.peer_median:.0f}"


#: GPU metric -> (how to read it, the peers' median below which nothing is compared: idle is no job)
GPU_METRICS: dict[str, tuple[Callable[[GpuSample], float | None], float]] = {
    "util%": (lambda g: g.util_pct, 20.0),
    "sm MHz": (lambda g: g.sm_mhz, 500.0),
    "power W": (lambda g: g.power_w, 100.0),
}


def _window(view: NodeView, window: int) -> list[NodeSample]:
    return list(view.history)[-window:]


def find_stragglers(state: ClusterState, stale_after_s: float, ratio: float, window: int = 10,
                    min_peers: int = 3, rank_cpu_floor: float = 20.0) -> list[Straggler]:
    """GPUs and ranks whose mean over the last ``window`` samples is under ``ratio`` x their peers' median."""
    found: list[Straggler] = []
    with state.lock:
        live = [v for v in (state.nodes[h] for h in state.hosts)
                if node_status(v, state.now, stale_after_s)[0] == "up"]
        # One pass over the window: per metric, per (host, GPU or rank), the values read.
        values: dict[str, dict[tuple[str, int], list[float]]] = {metric: {} for metric in (*GPU_METRICS, "cpu%")}
        for view in live:
            for sample in _window(view, window):
                for gpu in sample.gpus:
                    for metric, (read, _) in GPU_METRICS.items():
                        value = read(gpu)
                        if value is not None:
                            values[metric].setdefault((view.host, gpu.index), []).append(value)
                for rank in sample.ranks:
                    if rank.cpu_pct is not None:
                        values["cpu%"].setdefault((view.host, rank.rank), []).append(rank.cpu_pct)
    for metric, (_, floor) in GPU_METRICS.items():
        means = {key: statistics.fmean(v) for key, v in values[metric].items()}
        found += [Straggler(h, i, None, metric, v, m) for (h, i), v, m in _below(means, ratio, floor, min_peers)]
    cpu = {key: statistics.fmean(v) for key, v in values["cpu%"].items()}
    found += [Straggler(h, None, r, "cpu%", v, m) for (h, r), v, m in _below(cpu, ratio, rank_cpu_floor, min_peers)]
    return found


def _below(means: dict[tuple[str, int], float], ratio: float, floor: float,
           min_peers: int) -> list[tuple[tuple[str, int], float, float]]:
    if len(means) < min_peers:
        return []
    median = statistics.median(means.values())
    if median < floor:
        return []
    return [(key, value, median) for key, value in sorted(means.items()) if value < ratio * median]
