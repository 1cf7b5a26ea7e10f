"""What ``clusterkit stacks`` reads from the nodes, as plain values: each rank's threads and frames, each
node's answer, each round of dumps.

Built from the agent's reply (``agent stacks``, :mod:`clusterkit.node.collect.pystacks`); nothing here
reaches a node or prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Frame:
    """One Python frame: its function, file (as the node names it), line and that line's source."""

    name: str
    file: str
    line: int
    code: str = ""

    @property
    def place(self) -> str:
        """``file:line`` with the file shortened to what tells it apart (``torch/distributed/x.py``)."""
        return f"{short_path(self.file)}:{self.line}"


@dataclass(frozen=True)
class Thread:
    name: str
    main: bool
    #: Innermost first.
    frames: tuple[Frame, ...]
    active: bool | None = None


@dataclass
class RankStack:
    """One rank as a node saw it, and its stacks if they could be read."""

    host: str
    rank: int
    local: int
    pid: int
    state: str
    world: int | None = None
    gpu: int | None = None
    job: str = ""
    threads: tuple[Thread, ...] = ()
    #: ``py-spy`` or ``signal`` (the launch hook); "" when no stack was read.
    method: str = ""
    error: str = ""
    #: py-spy was refused (no ptrace rights over the rank).
    denied: bool = False
    #: Stopped (state ``T``): not read.
    stopped: bool = False
    #: Why py-spy did not read it where the hook did instead.
    fallback_from: str = ""
    #: Why ``--native`` frames are missing where py-spy read the Python ones.
    native_error: str = ""
    #: Seconds the rank was stopped at most while its stack was taken (py-spy's call; 0 when not
    #: stopped; None where unknown, the hook's own handler).
    paused_at_most_s: float | None = None
    took_s: float | None = None
    #: ``py-spy record``'s folded stacks per thread (``thread (TID): NAME;root;...;leaf`` -> samples).
    folded: dict[str, int] = field(default_factory=dict)
    sample_error: str = ""

    @property
    def main(self) -> Thread | None:
        """The thread that runs the training loop: py-spy's ``MainThread``, else the last listed."""
        return next((t for t in self.threads if t.main), self.threads[-1] if self.threads else None)

    @property
    def label(self) -> str:
        where = f"GPU {self.gpu}" if self.gpu is not None else f"local rank {self.local}"
        return f"rank {self.rank} ({self.host}, {where})"


@dataclass
class NodeDump:
    """One node's answer: its ranks, or why it gave none."""

    host: str
    ranks: list[RankStack] = field(default_factory=list)
    error: str = ""
    fix: str = ""
    ptrace_scope: int | None = None
    #: The node's user that read the ranks (0: root).
    uid: int | None = None


@dataclass
class Round:
    """One dump of every node, and when it was taken (head clock) and how long it took."""

    nodes: list[NodeDump]
    started_at: float
    seconds: float

    @property
    def ranks(self) -> list[RankStack]:
        return sorted((r for n in self.nodes for r in n.ranks), key=lambda r: r.rank)

    @property
    def silent(self) -> list[NodeDump]:
        return [n for n in self.nodes if n.error]

    def jobs(self) -> dict[str, int]:
        """The jobs found (their ``MASTER_ADDR:PORT``) and how many ranks each, the biggest first."""
        counts: dict[str, int] = {}
        for rank in self.ranks:
            counts[rank.job] = counts.get(rank.job, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))

    def only(self, job: str) -> Round:
        """This dump with the ranks of one job alone (rank numbers repeat from one job to the next)."""
        nodes = [replace(n, ranks=[r for r in n.ranks if r.job == job]) for n in self.nodes]
        return Round(nodes, self.started_at, self.seconds)


def short_path(path: str) -> str:
    """A frame's file without the part that differs from node to node: from the package under
    ``site-packages`` on (``torch/distributed/distributed_c10d.py``), else an absolute path's file name."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    # py-spy's record names files already shortened (``torch/distributed/x.py``): those stay as they are.
    return path.rsplit("/", 1)[-1] if path.startswith("/") else path


def frame_of(data: dict[str, Any]) -> Frame:
    return Frame(str(data.get("name") or "?"), str(data.get("file") or ""), int(data.get("line") or 0),
                 str(data.get("code") or ""))


def rank_of(host: str, data: dict[str, Any]) -> RankStack:
    """A rank from the agent's record of it."""
    threads = tuple(Thread(str(t.get("name") or ""), bool(t.get("main")),
                           tuple(frame_of(f) for f in t.get("frames") or ()), t.get("active"))
                    for t in data.get("threads") or ())
    sample = data.get("sample") or {}
    return RankStack(host=host, rank=int(data["rank"]), local=int(data.get("local") or 0), pid=int(data["pid"]),
                     state=str(data.get("state") or "?"), world=data.get("world"), gpu=data.get("gpu"),
                     job=str(data.get("job") or ""), threads=threads, method=str(data.get("method") or ""),
                     error=str(data.get("error") or ""), denied=bool(data.get("denied")),
                     stopped=bool(data.get("stopped")), fallback_from=str(data.get("fallback_from") or ""),
                     native_error=str(data.get("native_error") or ""),
                     paused_at_most_s=data.get("paused_at_most_s"), took_s=data.get("took_s"),
                     folded={str(k): int(v) for k, v in (sample.get("folded") or {}).items()},
                     sample_error=str(sample.get("error") or ""))


def node_of(host: str, reply: dict[str, Any]) -> NodeDump:
    """A node's dump from the agent's reply."""
    return NodeDump(host, [rank_of(host, r) for r in reply.get("ranks") or ()],
                    ptrace_scope=reply.get("ptrace_scope"), uid=reply.get("uid"))
