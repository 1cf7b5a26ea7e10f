"""Find the slow or broken node (or link) with the fewest rounds of two-node rings.

Why pairs and not halves: a two-node ring exercises exactly one link between two nodes, disjoint
pairs run side by side, and a pair's busbw compares directly with its peers'. Halving needs log2(N)
rounds one after the other and cannot tell a bad node from a bad link. The search:

1. Round 1 pairs the nodes (1-2, 3-4, ...), all pairs at once.
2. A pair is slow when its busbw is below ``slow_ratio`` of the best pair's (its peers), broken when
   the run failed. Nodes of pairs that are neither are good.
3. Every node not yet cleared is paired with a good node it has not met (each good node serves one
   suspect per round). With no good node yet, suspects meet nodes they have not met.
4. A node is slow (or broken) when it is slow (broken) with two good nodes, or with the only one
   there is; a slow pair of two nodes that are each fine with good nodes is a slow link.
5. A pair that reads slow but not far off (above ``clear_ratio`` of the best pair) is measured once
   more before it convicts anyone, and its better figure stands: noise on a shared machine only ever
   lowers a figure (one cold start read 0.11 of the best pair on the CPU namespace cluster, while a
   shaped link reads under 0.02), so one low reading is not evidence.

It stops when nothing is left to clear; with N nodes and one bad node that is three rounds at most.
When every pair is alike, no node is named (the peers agree); comparing with the expectation from
the topology is then the caller's call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from clusterkit.workloads.scripts.nccl_format import human_bytes, human_share

GOOD, SLOW, BROKEN, UNKNOWN = "good", "slow", "broken", "unknown"


@dataclass(frozen=True)
class PairResult:
    """One ring of ``nodes``: its busbw in GB/s (at ``size`` bytes when known), or None when the run
    failed (``detail`` says how)."""

    nodes: tuple[str, ...]
    busbw: float | None
    detail: str = ""
    seconds: float = 0.0
    size: int = 0

    @property
    def measured(self) -> str:
        """``0.0049 GB/s at 2 MiB``, or ``failed``."""
        if self.busbw is None:
            return "failed"
        return f"{self.busbw:.4g} GB/s" + (f" at {human_bytes(self.size)}" if self.size else "")

    @property
    def failed(self) -> bool:
        return self.busbw is None


#: Runs one round: the given disjoint groups, side by side; one result per group, same order.
Measure = Callable[[list[tuple[str, ...]]], list[PairResult]]


@dataclass
class SearchResult:
    """What the search concluded and every measurement it made, round by round."""

    nodes: list[str]
    rounds: list[list[PairResult]] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)
    slow_links: list[tuple[str, str]] = field(default_factory=list)
    reference_busbw: float | None = None
    slow_ratio: float = 0.5
    seconds: float = 0.0

    @property
    def excluded(self) -> list[str]:
        """Nodes to leave out of the hostfile: slow or broken ones, in hostfile order."""
        return [n for n in self.nodes if self.verdicts.get(n) in (SLOW, BROKEN)]

    def results(self) -> list[PairResult]:
        return [r for rnd in self.rounds for r in rnd]

    def classify(self, result: PairResult) -> str:
        if result.busbw is None:
            return BROKEN
        if self.reference_busbw and result.busbw < self.slow_ratio * self.reference_busbw:
            return SLOW
        return GOOD

    def evidence(self) -> list[str]:
        """One line per measurement, then the verdicts, for the report and the hostfile's comments."""
        lines = []
        for number, rnd in enumerate(self.rounds, start=1):
            for r in rnd:
                state = self.classify(r)
                value = r.measured
                share = (f" ({human_share(r.busbw / self.reference_busbw)} of the best pair)"
                         if r.busbw is not None and self.reference_busbw else "")
                lines.append(f"round {number}: {' + '.join(r.nodes)}: {value}{share} -> {state}"
                             + (f" ({r.detail})" if r.detail and state != GOOD else ""))
        for node in self.nodes:
            if self.verdicts.get(node) in (SLOW, BROKEN):
                lines.append(f"{node} is {self.verdicts[node]}: {self.why(node)}")
        for a, b in self.slow_links:
            lines.append(f"the link {a} <-> {b} is slow: both are fine with other nodes")
        return lines

    def why(self, node: str) -> str:
        """The measurements that convict ``node``."""
        pairs = [r for r in _best_per_pair(self) if node in r.nodes and self.classify(r) != GOOD]
        shown = "; ".join(f"with {', '.join(n for n in r.nodes if n != node)}: "
                          + (r.measured if r.busbw is not None else f"failed ({r.detail})")
                          for r in pairs)
        best = f" against {self.reference_busbw:.3g} GB/s for the best pair" if self.reference_busbw else ""
        return shown + best


def _pairs(nodes: Sequence[str]) -> tuple[list[tuple[str, ...]], list[str]]:
    pairs: list[tuple[str, ...]] = [(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
    return pairs, ([nodes[-1]] if len(nodes) % 2 else [])


#: A slow pair at or below this share of the best pair is convicted on one reading; one above it is
#: measured again first (step 5).
CLEAR_RATIO = 0.1


def find_slow(nodes: Sequence[str], measure: Measure, slow_ratio: float = 0.5, max_rounds: int = 6,
              clear_ratio: float = CLEAR_RATIO) -> SearchResult:
    """Run the search over ``nodes`` (at least two) with ``measure``; see the module docstring."""
    if len(nodes) < 2:
        raise ValueError("finding a slow node needs at least two nodes")
    started = time.monotonic()
    search = SearchResult(list(nodes), slow_ratio=slow_ratio)
    first, _ = _pairs(list(nodes))
    search.rounds.append(measure(first))
    for _ in range(max_rounds - 1):
        _judge(search)
        plan = _next_round(search) or _second_looks(search, clear_ratio)
        if not plan:
            break
        search.rounds.append(measure(plan))
    _judge(search)
    search.seconds = time.monotonic() - started
    return search


def _met(search: SearchResult, a: str, b: str) -> bool:
    return any(a in r.nodes and b in r.nodes for r in search.results())


def _best_per_pair(search: SearchResult) -> list[PairResult]:
    """Each group's best reading (a failure only when every reading of it failed), first-measured order."""
    best: dict[frozenset[str], PairResult] = {}
    for r in search.results():
        key = frozenset(r.nodes)
        if key not in best or (r.busbw or -1.0) > (best[key].busbw or -1.0):
            best[key] = r
    return list(best.values())


def _second_looks(search: SearchResult, clear_ratio: float) -> list[tuple[str, ...]]:
    """Disjoint slow pairs read once and not far below the best pair: measured again before they count."""
    readings: dict[frozenset[str], int] = {}
    for r in search.results():
        readings[frozenset(r.nodes)] = readings.get(frozenset(r.nodes), 0) + 1
    plan: list[tuple[str, ...]] = []
    busy: set[str] = set()
    for r in _best_per_pair(search):
        doubtful = (search.classify(r) == SLOW and r.busbw is not None and search.reference_busbw is not None
                    and r.busbw > clear_ratio * search.reference_busbw)
        if doubtful and readings[frozenset(r.nodes)] == 1 and not busy & set(r.nodes):
            plan.append(r.nodes)
            busy |= set(r.nodes)
    return plan


def _judge(search: SearchResult) -> None:
    results = _best_per_pair(search)
    rates = [r.busbw for r in results if r.busbw is not None]
    search.reference_busbw = max(rates) if rates else None
    good_pairs = [r for r in results if search.classify(r) == GOOD]
    good = {n for r in good_pairs for n in r.nodes}
    search.verdicts = {n: GOOD if n in good else UNKNOWN for n in search.nodes}
    search.slow_links = []
    for node in search.nodes:
        if node in good:
            continue
        with_good = [r for r in results if node in r.nodes and any(o in good for o in r.nodes if o != node)]
        partners = {o for r in with_good for o in r.nodes if o != node}
        enough = len(partners) >= 2 or (partners and not (good - partners - {node}))
        if with_good and enough:
            states = {search.classify(r) for r in with_good}
            search.verdicts[node] = BROKEN if states == {BROKEN} else SLOW
    for r in results:
        if search.classify(r) != GOOD and len(r.nodes) == 2 and all(search.verdicts[n] == GOOD for n in r.nodes):
            search.slow_links.append((r.nodes[0], r.nodes[1]))


def _next_round(search: SearchResult) -> list[tuple[str, ...]]:
    good = [n for n in search.nodes if search.verdicts[n] == GOOD]
    pending = [n for n in search.nodes if search.verdicts[n] == UNKNOWN]
    plan: list[tuple[str, ...]] = []
    busy: set[str] = set()
    for node in pending:
        partner = next((g for g in good if g not in busy and not _met(search, node, g)), None)
        if partner is not None:
            plan.append((node, partner))
            busy |= {node, partner}
    if plan or good:
        return plan
    # No good node yet: let the suspects meet nodes they have not met.
    for node in pending:
        if node in busy:
            continue
        partner = next((o for o in search.nodes if o != node and o not in busy and not _met(search, node, o)), None)
        if partner is not None:
            plan.append((node, partner))
            busy |= {node, partner}
    return plan


def cleaned_hostfile(text: str, excluded: dict[str, str]) -> str:
    """The hostfile ``text`` with each excluded host's line commented out, the reason beside it."""
    out = []
    for raw in text.splitlines():
        stripped = raw.strip()
        host = stripped.split()[0] if stripped and not stripped.startswith("#") else None
        if host in excluded:
            out.append(f"# {raw.rstrip()}  # left out by clusterkit bench find-slow: {excluded[host]}")
        else:
            out.append(raw.rstrip())
    return "\n".join(out) + "\n"
