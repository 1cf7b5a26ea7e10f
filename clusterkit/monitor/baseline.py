"""The monitor against a saved run: each GPU's live sample set against what the run recorded for it.

A GPU is flagged when it throttles for a reason it did not have then, when its max SM clock or its
power limit is lower than then, or when, busy, it runs below ``PEER_SHARE`` of the max SM clock its
model's GPUs had then (a GPU slower than its peers were last time, whatever its peers do now).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from clusterkit.core.saved_run import SavedRun
from clusterkit.monitor.model import NodeSample
from clusterkit.monitor.views import BENIGN_REASONS
from clusterkit.node.facts import Unavailable

#: A busy GPU below this share of its model's max SM clock of the saved run is flagged.
PEER_SHARE = 0.8
#: Utilisation from which a GPU counts as busy (an idle GPU clocks down by design).
BUSY_PCT = 50.0


@dataclass(frozen=True)
class GpuBaseline:
    model: str
    sm_max_mhz: int | None
    power_limit_w: float | None
    reasons: frozenset[str]


@dataclass
class Baseline:
    """What a saved run recorded per GPU (host, index), and its models' median max SM clock."""

    against: str
    gpus: dict[tuple[str, int], GpuBaseline] = field(default_factory=dict)
    model_sm_max_mhz: dict[str, float] = field(default_factory=dict)


def baseline_from_run(run: SavedRun, against: str) -> Baseline:
    baseline = Baseline(against)
    clocks: dict[str, list[int]] = {}
    for host, facts in run.facts.items():
        if isinstance(facts, Unavailable) or isinstance(facts.nvidia, Unavailable):
            continue
        if isinstance(facts.nvidia.gpus, Unavailable):
            continue
        for gpu in facts.nvidia.gpus:
            sm_max = gpu.sm_clock_max_mhz if isinstance(gpu.sm_clock_max_mhz, int) else None
            limit = gpu.power_limit_w if isinstance(gpu.power_limit_w, float) else None
            reasons = frozenset(gpu.clock_event_reasons) if isinstance(gpu.clock_event_reasons, list) else frozenset()
            baseline.gpus[(host, gpu.index)] = GpuBaseline(gpu.name, sm_max, limit, reasons)
            if sm_max:
                clocks.setdefault(gpu.name, []).append(sm_max)
    baseline.model_sm_max_mhz = {model: statistics.median(values) for model, values in clocks.items()}
    return baseline


def deviations(baseline: Baseline, host: str, sample: NodeSample) -> list[tuple[int, str]]:
    """(GPU index, what is off) for each GPU of ``sample`` outside what ``baseline`` recorded for it."""
    found = []
    for gpu in sample.gpus:
        then = baseline.gpus.get((host, gpu.index))
        if then is None:
            continue
        new = sorted(set(gpu.reasons or ()) - BENIGN_REASONS - then.reasons)
        if new:
            found.append((gpu.index, f"throttling ({', '.join(new)}) it did not have in {baseline.against}"))
        if gpu.sm_max_mhz and then.sm_max_mhz and gpu.sm_max_mhz < then.sm_max_mhz:
            found.append((gpu.index, f"max SM clock {gpu.sm_max_mhz:.0f} MHz, {then.sm_max_mhz} in "
                                     f"{baseline.against}"))
        if gpu.power_limit_w and then.power_limit_w and gpu.power_limit_w < then.power_limit_w - 1:
            found.append((gpu.index, f"power limit {gpu.power_limit_w:.0f} W, {then.power_limit_w:.0f} W in "
                                     f"{baseline.against}"))
        peers = baseline.model_sm_max_mhz.get(then.model)
        busy = gpu.util_pct is not None and gpu.util_pct >= BUSY_PCT
        if busy and peers and gpu.sm_mhz is not None and gpu.sm_mhz < PEER_SHARE * peers:
            found.append((gpu.index, f"SM clock {gpu.sm_mhz:.0f} MHz under load, below {PEER_SHARE:.0%} of the "
                                     f"{peers:.0f} MHz its peers could reach in {baseline.against}"))
    return found
