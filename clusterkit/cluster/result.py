"""One host's outcome and a group of them: the single result type of every call on :class:`Nodes`.

As Fabric's ``GroupResult``: a failed host is a value in the result (why, and what to do), never a
crash of the whole call, and the hosts keep the order they were asked in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from clusterkit.cluster.remote.fanout import HostResult

T = TypeVar("T")
U = TypeVar("U")

__all__ = ["CommandOutput", "GroupResult", "HostResult"]


class GroupResult(dict[str, HostResult[T]]):
    """Per host (in the order asked): a value, or an error with its fix."""

    @classmethod
    def of(cls, results: Iterable[HostResult[T]]) -> GroupResult[T]:
        group: GroupResult[T] = cls()
        for result in results:
            group[result.host] = result
        return group

    @property
    def succeeded(self) -> dict[str, T]:
        """Hosts that answered, and their values."""
        return {h: r.value for h, r in self.items() if r.ok and r.value is not None}

    @property
    def failed(self) -> dict[str, HostResult[T]]:
        """Hosts that did not answer (an error, a timeout, no value), with why."""
        return {h: r for h, r in self.items() if not r.ok or r.value is None}

    def then(self, judge: Callable[[str, T], U]) -> GroupResult[U]:
        """Each success's value through ``judge`` (an exception there is that host's error); failures kept."""
        out: GroupResult[U] = GroupResult()
        for host, result in self.items():
            if not result.ok or result.value is None:
                out[host] = HostResult(host, error=result.error or f"{host} gave no value", fix=result.fix,
                                       seconds=result.seconds)
                continue
            try:
                out[host] = HostResult(host, value=judge(host, result.value), seconds=result.seconds)
            except Exception as exc:  # a bad reply is that host's failure, not the whole call's
                out[host] = HostResult(host, error=str(exc), fix=getattr(exc, "fix", None), seconds=result.seconds)
        return out


@dataclass
class CommandOutput:
    """What a shell command printed on one node, and its exit status (the caller judges it)."""

    exit_code: int
    stdout: str = ""
    stderr: str = ""
    #: Head clock (``time.time()``) when the command's end was read.
    finished_at: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 3) -> str:
        """The last lines of stderr (else stdout), joined: what to show when it failed."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " | ".join(text[-lines:]) or "no output"
