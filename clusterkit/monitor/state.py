"""What the head knows about each node: its link, its latest sample, a short history, events since start;
and the job's progress from its log (``--log``), when followed.

Sources (live streams, a replayed recording) write into a ``ClusterState`` from their threads; the UI
reads it. Every change bumps ``version`` so a view redraws only when something changed. ``now`` is
the clock the ages are measured against: the wall clock when live, the recording's time on replay.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clusterkit.cluster.remote.stream import Status, StreamState
from clusterkit.monitor.model import NodeSample, RankSample, SampleError, XidSample, decode_sample
from clusterkit.monitor.progress import Progress

if TYPE_CHECKING:
    from clusterkit.monitor.baseline import Baseline

#: Samples of history kept per node (sparklines, straggler windows).
HISTORY = 120


@dataclass(frozen=True)
class SeenRank:
    """A rank as last seen, and when; a rank that vanished while its node kept reporting has exited."""

    host: str
    sample: RankSample
    first_seen: float
    last_seen: float
    #: How long its CPU has stayed under 1% (stalled?), in seconds.
    idle_s: float = 0.0


@dataclass
class NodeView:
    host: str
    slots: int | None = None
    link: StreamState | None = None
    last: NodeSample | None = None
    received_at: float | None = None
    history: deque[NodeSample] = field(default_factory=lambda: deque(maxlen=HISTORY))
    #: Volatile uncorrected ECC count per GPU at first sight: "new" errors are counted from there.
    ecc_baseline: dict[int, int] = field(default_factory=dict)
    xids: list[tuple[float, XidSample]] = field(default_factory=list)
    #: Sequence numbers that never arrived, and agent restarts (a new ``boot``).
    missed: int = 0
    restarts: int = 0
    error: str | None = None

    @property
    def link_status(self) -> Status | None:
        return self.link.status if self.link else None

    def new_ecc(self, sample: NodeSample) -> int:
        return sum(max(0, (g.ecc_uncorrected or 0) - self.ecc_baseline.get(g.index, 0)) for g in sample.gpus)


class ClusterState:
    """Every node's view, thread-safe; ``apply_*`` from sources, reads under ``lock``."""

    def __init__(self, hosts: list[str], slots: dict[str, int] | None = None, interval_s: float = 1.0) -> None:
        self.hosts = list(hosts)
        self.interval_s = interval_s
        self.nodes = {h: NodeView(h, (slots or {}).get(h)) for h in hosts}
        self.ranks: dict[tuple[str, int], SeenRank] = {}  # (job, rank) -> last sighting
        #: The job's progress from its log; None when no log is followed.
        self.progress: Progress | None = None
        #: What a saved run recorded per GPU (``monitor --baseline``): live figures outside it are alerts.
        self.baseline: Baseline | None = None
        self.now = 0.0
        self.version = 0
        self.lock = threading.RLock()

    def node(self, host: str) -> NodeView:
        if host not in self.nodes:  # a recording may name hosts the header did not
            self.hosts.append(host)
            self.nodes[host] = NodeView(host)
        return self.nodes[host]

    def apply_raw(self, host: str, raw: Any, received_at: float) -> None:
        """A decoded JSON sample from ``host``; one that cannot be read sets the node's error."""
        try:
            sample = decode_sample(raw)
        except SampleError as exc:
            with self.lock:
                self.node(host).error = str(exc)
                self.version += 1
            return
        self.apply_sample(host, sample, received_at)

    def apply_sample(self, host: str, sample: NodeSample, received_at: float) -> None:
        with self.lock:
            view = self.node(host)
            previous = view.last
            if previous is not None:
                if sample.boot != previous.boot:
                    view.restarts += 1
                elif sample.seq > previous.seq + 1:
                    view.missed += sample.seq - previous.seq - 1
            for gpu in sample.gpus:
                if gpu.ecc_uncorrected is not None:
                    view.ecc_baseline.setdefault(gpu.index, gpu.ecc_uncorrected)
            view.xids.extend((received_at, x) for x in sample.xids)
            view.last, view.received_at, view.error = sample, received_at, None
            view.history.append(sample)
            self._see_ranks(host, sample, received_at)
            self.now = max(self.now, received_at)
            self.version += 1

    def _see_ranks(self, host: str, sample: NodeSample, at: float) -> None:
        for rank in sample.ranks:
            key = (rank.job, rank.rank)
            seen = self.ranks.get(key)
            idle = 0.0
            if seen is not None and seen.sample.pid == rank.pid and rank.cpu_pct is not None and rank.cpu_pct < 1.0:
                idle = seen.idle_s + (at - seen.last_seen)
            first = seen.first_seen if seen is not None and seen.sample.pid == rank.pid else at
            self.ranks[key] = SeenRank(host, rank, first, at, idle)

    def apply_link(self, state: StreamState) -> None:
        with self.lock:
            self.node(state.host).link = state
            self.version += 1

    def apply_progress(self, progress: Progress) -> None:
        with self.lock:
            if progress != self.progress:
                self.progress = progress
                self.version += 1

    def set_now(self, now: float) -> None:
        with self.lock:
            if now != self.now:
                self.now = now
                self.version += 1
