"""PyTorch's flight recorder: where its dumps go, how to read one, and the first collective the ranks
disagree on.

Each rank keeps a ring buffer of its last collectives (``TORCH_FR_BUFFER_SIZE`` entries; torch < 2.7
reads ``TORCH_NCCL_TRACE_BUFFER_SIZE``) and writes it as a pickled dict to ``<prefix><global rank>``
(``TORCH_FR_DUMP_TEMP_FILE``, formerly ``TORCH_NCCL_DEBUG_INFO_TEMP_FILE``): NCCL on a watchdog timeout,
any backend when asked (``torch._C._distributed_c10d._dump_fr_trace``, which clusterkit's rank hook calls
on request or at exit). The dict holds ``version``, ``pg_config`` (per group: ``name``, ``desc``,
``ranks`` as the string ``"[0, 1]"``), ``pg_status`` and ``entries``: one per collective, with
``record_id``, ``pg_id``, ``process_group`` (name, description), ``collective_seq_id`` (per group),
``p2p_seq_id``, ``is_p2p``, ``profiling_name`` (``gloo:all_reduce``, ``nccl:all_reduce``),
``input_sizes``, ``output_sizes``, dtypes, ``state`` and timestamps. Torch 2.13 records gloo too.

Pure: bytes in, values out. A dump is read with an unpickler that builds plain containers only.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterkit.core.findings import CLUSTER_HOST, Finding, Outcome, Severity

#: Entries each rank keeps by default: 2000 x ~1 KiB on the host, nothing on the GPU.
DEFAULT_BUFFER_SIZE = 2000
#: A dump's file name before the rank's global number, as torch writes it (``<dir>/rank_7``).
DUMP_PREFIX = "rank_"
#: Touching this file in a job's flight-recorder directory asks every rank's hook for a fresh dump.
REQUEST_FILE = "dump-request"
#: Where ``clusterkit launch`` keeps each job's directory on every node, by job id.
RUNS_ROOT = "/tmp/clusterkit-runs"
#: The flight recorder's part of a job's directory: the rank hook (``sitecustomize.py``) and the dumps.
FLIGHTREC_SUBDIR = "flightrec"


def flightrec_env(dump_dir: str, buffer_size: int = DEFAULT_BUFFER_SIZE) -> dict[str, str]:
    """The variables that turn the recorder on with dumps to ``dump_dir``, under new and old names."""
    prefix = f"{dump_dir.rstrip('/')}/{DUMP_PREFIX}"
    return {"TORCH_FR_BUFFER_SIZE": str(buffer_size), "TORCH_NCCL_TRACE_BUFFER_SIZE": str(buffer_size),
            "TORCH_FR_DUMP_TEMP_FILE": prefix, "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": prefix,
            "TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}


class DumpError(ValueError):
    """A file that is not a flight-recorder dump."""


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings and numbers; refuses any class (a dump needs none)."""

    def find_class(self, module: str, name: str) -> Any:
        raise DumpError(f"a flight-recorder dump names no classes, this one names {module}.{name}")


@dataclass(frozen=True)
class Collective:
    """One recorded collective on one rank."""

    group: str
    seq: int
    op: str
    input_sizes: tuple[tuple[int, ...], ...]
    output_sizes: tuple[tuple[int, ...], ...]
    state: str

    @property
    def signature(self) -> tuple[str, tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
        """What every rank must agree on for the collective to match."""
        return (self.op, self.input_sizes, self.output_sizes)

    def describe(self) -> str:
        sizes = ", ".join("x".join(str(d) for d in s) or "scalar" for s in self.input_sizes) or "no tensors"
        return f"{self.op} ({sizes})"


@dataclass(frozen=True)
class RankTrace:
    """One rank's dump: its collectives by group, and the ranks of each group."""

    rank: int
    host: str
    collectives: list[Collective]
    #: Group name -> its global ranks, from ``pg_config``.
    groups: dict[str, list[int]] = field(default_factory=dict)
    version: str = ""

    def in_group(self, group: str) -> dict[int, Collective]:
        return {c.seq: c for c in self.collectives if c.group == group}


def _sizes(value: object) -> tuple[tuple[int, ...], ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(tuple(int(d) for d in s) for s in value if isinstance(s, list | tuple))


def _ranks(text: object) -> list[int]:
    if isinstance(text, list | tuple):
        return [int(r) for r in text]
    if not isinstance(text, str):
        return []
    return [int(part) for part in text.strip("[] ").split(",") if part.strip()]


def load_dump(data: bytes, rank: int, host: str = "") -> RankTrace:
    """The rank's trace from the bytes of its dump; a file that is not one raises :class:`DumpError`."""
    try:
        raw = _PlainUnpickler(io.BytesIO(data)).load()
    except DumpError:
        raise
    except Exception as exc:
        raise DumpError(f"not a flight-recorder dump ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list):
        raise DumpError("not a flight-recorder dump (no 'entries' list)")
    return trace_from_dict(raw, rank, host)


def trace_from_dict(raw: Mapping[str, Any], rank: int, host: str = "") -> RankTrace:
    """The rank's trace from an unpickled dump (p2p sends and receives left out: they have no group order)."""
    collectives = []
    for entry in raw.get("entries", []):
        if not isinstance(entry, dict) or entry.get("is_p2p"):
            continue
        group = entry.get("process_group")
        name = str(group[0]) if isinstance(group, list | tuple) and group else str(entry.get("pg_id", ""))
        collectives.append(Collective(name, int(entry.get("collective_seq_id", 0)),
                                      str(entry.get("profiling_name", "?")), _sizes(entry.get("input_sizes")),
                                      _sizes(entry.get("output_sizes")), str(entry.get("state", ""))))
    config = raw.get("pg_config", {})
    groups = {}
    if isinstance(config, dict):
        for key, value in config.items():
            if isinstance(value, dict):
                groups[str(key)] = _ranks(value.get("ranks"))
    return RankTrace(rank, host, collectives, groups, str(raw.get("version", "")))


@dataclass(frozen=True)
class Disagreement:
    """The first collective of a group the ranks do not all agree on."""

    group: str
    seq: int
    #: Each signature seen at ``seq`` and the ranks that recorded it, the largest share first.
    variants: list[tuple[Collective, list[int]]]
    #: Ranks of the group that never got to ``seq`` (their last recorded collective before it).
    missing: list[int]
    #: Where each of the missing ranks stopped: rank -> its last collective (None: it recorded none).
    last_of_missing: dict[int, Collective | None]
    hosts: dict[int, str] = field(default_factory=dict)
    #: Members of the group that gave no dump (not judged).
    unheard: list[int] = field(default_factory=list)

    @property
    def expected(self) -> Collective:
        return self.variants[0][0]

    def describe(self) -> str:
        """One line: what, where, who."""
        head = f"collective #{self.seq} of process group {self.group!r}"
        parts = []
        if self.missing:
            parts.append(f"{self.expected.describe()} reached by rank(s) {_ranks_text(self.variants[0][1])}, "
                         f"never by rank(s) {self._ranks_where(self.missing)}")
        if len(self.variants) > 1:
            seen = "; ".join(f"rank(s) {_ranks_text(ranks)} called {c.describe()}" for c, ranks in self.variants)
            parts.append(f"ranks disagree: {seen}")
        if self.unheard:
            parts.append(f"rank(s) {_ranks_text(self.unheard)} gave no dump")
        return f"{head}: " + "; ".join(parts)

    def _ranks_where(self, ranks: Sequence[int]) -> str:
        hosts = sorted({self.hosts[r] for r in ranks if self.hosts.get(r)})
        return _ranks_text(ranks) + (f" (on {', '.join(hosts)})" if hosts else "")


def _ranks_text(ranks: Sequence[int]) -> str:
    """``0-4,6``: runs of consecutive ranks as ranges."""
    spans: list[list[int]] = []
    for rank in sorted(set(ranks)):
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def first_disagreement(traces: Sequence[RankTrace], world: Sequence[int] | None = None) -> Disagreement | None:
    """The earliest collective (lowest sequence number, in the group where it is lowest) that some member
    rank with a dump never reached, or recorded with another op or other sizes; None when they all agree.

    A group's members are those its ``pg_config`` lists; torch 2.13's gloo dumps key the default group's
    config by ``""`` while its entries name it ``"0"``, so the default group's members are every rank
    with a dump, those of the largest group a dump lists, and ``world``. Members with no dump are not
    judged (they are named as ``unheard``), nor are sequence numbers a rank's ring buffer no longer holds.
    """
    by_rank = {t.rank: t for t in traces}
    hosts = {t.rank: t.host for t in traces}
    found: list[Disagreement] = []
    for group in sorted({c.group for t in traces for c in t.collectives}):
        members = _members(group, traces, world)
        recorded = {r: by_rank[r].in_group(group) for r in members if r in by_rank}
        unheard = [r for r in members if r not in by_rank]
        lowest = max((min(seqs) for seqs in recorded.values() if seqs), default=0)
        highest = max((max(seqs) for seqs in recorded.values() if seqs), default=0)
        for seq in range(lowest, highest + 1):
            variants: dict[tuple[Any, ...], list[int]] = {}
            examples: dict[tuple[Any, ...], Collective] = {}
            missing = []
            for rank, calls in recorded.items():
                call = calls.get(seq)
                if call is None:
                    missing.append(rank)
                    continue
                variants.setdefault(call.signature, []).append(rank)
                examples[call.signature] = call
            if missing or len(variants) > 1:
                ordered = sorted(variants.items(), key=lambda item: (-len(item[1]), item[1]))
                last = {r: _last_before(recorded[r], seq) for r in missing}
                found.append(Disagreement(group, seq, [(examples[k], ranks) for k, ranks in ordered],
                                          missing, last, hosts, unheard))
                break
    if not found:
        return None
    return min(found, key=lambda d: (d.seq, d.group))


#: The name torch gives the default (world) process group in a dump's entries.
DEFAULT_GROUP = "0"


def _members(group: str, traces: Sequence[RankTrace], world: Sequence[int] | None) -> list[int]:
    configured = next((t.groups[group] for t in traces if t.groups.get(group)), None)
    if configured:
        return sorted(configured)
    if group == DEFAULT_GROUP:  # every rank: those with a dump, and the largest group any dump lists
        largest = max((ranks for t in traces for ranks in t.groups.values()), key=len, default=[])
        return sorted({t.rank for t in traces} | set(world or ()) | set(largest))
    return sorted({t.rank for t in traces if any(c.group == group for c in t.collectives)})


def _last_before(calls: Mapping[int, Collective], seq: int) -> Collective | None:
    before = [s for s in calls if s < seq]
    return calls[max(before)] if before else None


DESYNC_ID = "collective-desync"


def disagreement_finding(disagreement: Disagreement) -> Finding:
    """The disagreement as a finding: what, the ranks, the evidence, what to do."""
    d = disagreement
    stops = "; ".join(f"rank {r} last recorded {c.describe()} #{c.seq}" if c else f"rank {r} recorded none"
                      for r, c in sorted(d.last_of_missing.items())[:8])
    if d.missing:
        fix = (f"look at what rank(s) {_ranks_text(d.missing)} do instead of {d.expected.op} #{d.seq}: a branch "
               "on the rank that skips a collective, a dataloader or I/O wait, or a frozen node (take their "
               "stacks; drain the node if it does not answer)")
    else:
        fix = ("make every rank call the same collectives in the same order with the same shapes (a branch on "
               "the rank or on data that changes which collective or which tensor comes next)")
    message = d.describe() + (f". Evidence: {stops}" if stops else "")
    return Finding(DESYNC_ID, Severity.ERROR, Outcome.FAIL, CLUSTER_HOST, f"process group {d.group}", message,
                   "a collective some ranks never call (or call with other tensors) blocks all the others "
                   "until the watchdog's timeout (30 minutes by default)", fix)
