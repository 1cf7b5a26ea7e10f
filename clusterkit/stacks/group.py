"""Ranks grouped by where they are: identical stacks once, with the ranks that share them, odd ones first.

Pure functions over :mod:`clusterkit.stacks.model`. Two ranks are in the same place when their main
threads (the training loop) have the same Python frames: function, file (without the node's own
prefix, see :func:`~clusterkit.stacks.model.short_path`) and line; native frames (``--native``) are
shown, not compared (their addresses differ from process to process). Lines are kept: a rank that
skipped an ``all_reduce`` waits in the *next* one, a line further down the same function, and only the
line tells it apart. Other threads (gloo's, a pin-memory thread, a logger) vary in number and place
from rank to rank without meaning anything, so they are left out of the grouping (``--json`` keeps them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clusterkit.core.hostlist import compress
from clusterkit.stacks.model import Frame, RankStack, short_path

#: Where torch and DeepSpeed run collectives (a frame there is inside the collective's call).
COLLECTIVE_PATHS = ("torch/distributed/", "deepspeed/comm/")
COLLECTIVE_OPS = frozenset({
    "all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_into_tensor", "all_gather_object",
    "all_gather_coalesced", "reduce_scatter", "reduce_scatter_tensor", "reduce_scatter_fn", "broadcast",
    "broadcast_object_list", "barrier", "monitored_barrier", "all_to_all", "all_to_all_single", "reduce", "gather",
    "scatter", "send", "recv", "isend", "irecv", "wait", "inference_all_reduce", "allreduce_fn", "_all_reduce",
})
DATALOADER_PATHS = ("torch/utils/data/",)
LOCK_CODE = re.compile(r"\.acquire\(|\bwith\b.*lock|\.wait\(", re.IGNORECASE)


@dataclass(frozen=True)
class Place:
    """What a rank's main thread is doing: ``kind`` (collective, dataloader, lock, code), the operation
    (the collective, the dataloader's function, the function) and the line that called it."""

    kind: str
    op: str
    site: Frame | None

    def describe(self) -> str:
        site = self.site
        where = f"{site.place}" if site else "?"
        code = f" `{site.code}`" if site and site.code else ""
        if self.kind == "collective":
            return f"in `{self.op}` ({where})"
        if self.kind == "dataloader":
            return f"in DataLoader `{self.op}` {where}{code}"
        if self.kind == "lock":
            return f"waiting on a lock in `{self.op}` {where}{code}"
        return f"in `{self.op}` {where}{code}"


def _in(frame: Frame, paths: Sequence[str]) -> bool:
    path = short_path(frame.file)
    return any(path.startswith(p) for p in paths)


def python_frames(frames: Sequence[Frame]) -> list[Frame]:
    """The Python frames of a stack that may hold native ones (``--native``: a library for file, no line,
    addresses that differ from process to process)."""
    return [f for f in frames if f.line > 0]


def place_of(frames: Sequence[Frame]) -> Place:
    """Where a main thread is, from its frames (innermost first; native frames are left out)."""
    frames = python_frames(frames)
    if not frames:
        return Place("code", "?", None)
    for i, frame in enumerate(frames):
        if _in(frame, COLLECTIVE_PATHS) and frame.name in COLLECTIVE_OPS:
            caller = next((f for f in frames[i + 1:] if not _in(f, COLLECTIVE_PATHS)), None)
            return Place("collective", frame.name, caller)
    loader = [i for i, f in enumerate(frames) if _in(f, DATALOADER_PATHS)]
    if loader:
        outermost = loader[-1]
        return Place("dataloader", frames[outermost].name, next(iter(frames[outermost + 1:]), frames[outermost]))
    inner = frames[0]
    if LOCK_CODE.search(inner.code) or (short_path(inner.file) == "threading.py" and inner.name in ("wait", "acquire")):
        caller = next((f for f in frames if short_path(f.file) != "threading.py"), inner)
        return Place("lock", caller.name, caller)
    return Place("code", inner.name, inner)


def signature(rank: RankStack) -> tuple[str, ...]:
    """What makes two ranks the same place: their main thread's frames, or why none was read."""
    main = rank.main
    if rank.stopped:
        return ("!stopped",)
    if main is None:
        return ("!unread", "denied" if rank.denied else rank.error.split(":")[0])
    return tuple(f"{f.name} {short_path(f.file)}:{f.line}" for f in python_frames(main.frames))


@dataclass
class Group:
    """Ranks in one place (or unread for one reason), and that place."""

    ranks: list[RankStack]
    #: The place of a readable group; None for ranks whose stacks were not read.
    place: Place | None
    #: The main thread's frames (innermost first) of the group's first rank.
    frames: tuple[Frame, ...] = ()

    @property
    def why_unread(self) -> str:
        first = self.ranks[0]
        if first.stopped:
            return "stopped (state T): SIGSTOPped or frozen, its stack cannot be read"
        return f"not read: {first.error}"

    def describe(self) -> str:
        """``rank 5 (node3, GPU 5) in `f` train.py:88``, ``ranks 0-4,6-15 in `all_reduce` (x.py:12)``."""
        what = self.place.describe() if self.place is not None else self.why_unread
        return f"{ranks_text(self.ranks)} {what}"


def rank_list(ranks: Iterable[int]) -> str:
    """``0-4,6-15`` (host-list form)."""
    return compress(str(r) for r in ranks).strip("[]")


def ranks_text(ranks: Sequence[RankStack]) -> str:
    """One rank with its node and GPU, or many as a rank list with their nodes."""
    if len(ranks) == 1:
        return ranks[0].label
    return f"ranks {rank_list(r.rank for r in ranks)} ({compress(r.host for r in ranks)})"


def group_ranks(ranks: Iterable[RankStack]) -> list[Group]:
    """Ranks in the same place together; unread groups first, then the smallest groups (the odd ones),
    then by first rank."""
    by_signature: dict[tuple[str, ...], list[RankStack]] = {}
    for rank in sorted(ranks, key=lambda r: r.rank):
        by_signature.setdefault(signature(rank), []).append(rank)
    groups = []
    for members in by_signature.values():
        main = members[0].main
        readable = not members[0].stopped and main is not None
        groups.append(Group(members, place_of(main.frames) if readable and main else None,
                            main.frames if readable and main else ()))
    return sorted(groups, key=lambda g: (g.place is not None, len(g.ranks), g.ranks[0].rank))


def unchanged(first: Iterable[RankStack], second: Iterable[RankStack]) -> list[int]:
    """Ranks read in both dumps whose main thread did not move between them."""
    before = {r.rank: signature(r) for r in first if r.main is not None and not r.stopped}
    return sorted(r.rank for r in second if r.rank in before and r.main is not None and not r.stopped
                  and signature(r) == before[r.rank])
