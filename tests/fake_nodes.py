"""A stand-in :class:`~clusterkit.cluster.Nodes` for unit tests of orchestration: each host's answer is
scripted (a value, a refusal, a timeout, a late answer) and every call is recorded, so each path of a
feature runs in milliseconds. The cluster tests stay the proof on real sshd and slurmd.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.cluster import (
    BroadcastOptions,
    CommandOutput,
    GroupResult,
    HostResult,
    HostStream,
    LaunchLine,
    LaunchStyle,
    ProgressListener,
    SchedulerView,
)
from clusterkit.cluster.remote.agent import AgentReply
from clusterkit.cluster.remote.ssh import SshSettings
from clusterkit.cluster.remote.stream import Backoff, LineStream
from clusterkit.cluster.remote.transfer import Delivery, RemoteFile
from clusterkit.core.inventory import ActiveHost, HostEntry
from clusterkit.core.launchline import LaunchPlan, build_launch_line

#: What a scripted host does: a value (returned), an Exception (its error), or a callable computing either.
Answer = Any


def hosts_named(*names: str, slots: int = 1) -> list[ActiveHost]:
    """Active hosts with ``slots`` slots each, as a hostfile would give them."""
    return [ActiveHost(n, tuple(range(slots)), HostEntry(n, slots, i + 1)) for i, n in enumerate(names)]


class ScriptedChannel:
    """A stream's channel that hands out ``lines`` one read at a time, then ends (``ends``, saying ``why``) or
    goes quiet (a frozen node)."""

    def __init__(self, lines: list[str], *, ends: bool = True, why: str = "the command exited 0") -> None:
        self.lines = list(lines)
        self.ends = ends
        self.why = why

    def read(self, timeout_s: float) -> bytes | None:
        if self.lines:
            return (self.lines.pop(0) + "\n").encode()
        if self.ends:
            return None
        time.sleep(min(timeout_s, 0.05))
        return b""

    def describe_end(self) -> str:
        return self.why

    def close(self) -> None:
        self.lines.clear()


@dataclass
class Call:
    """One call made on the fake: its kind (``run``, ``agent``, ``put``, ``cleanup``...), hosts and details."""

    kind: str
    hosts: list[str]
    detail: Any = None


@dataclass
class FakeNodes:
    """Nodes whose answers a test scripts per host and per kind of call.

    ``on_run(host, command)``, ``on_agent(host, args)``, ``on_put(host, remote)``: return the value, or
    raise to make that host fail (its message becomes the error; a ``fix`` attribute, the fix).
    ``timeouts``: hosts that never answer (an error saying so, after no wait at all).
    """

    hosts: list[ActiveHost]
    transport: str = "fake"
    on_run: Callable[[str, str], CommandOutput] = lambda host, command: CommandOutput(0)
    on_agent: Callable[[str, list[str]], Any] = lambda host, args: {}
    on_put: Callable[[str, RemoteFile], Delivery] | None = None
    timeouts: set[str] = field(default_factory=set)
    on_stream: Callable[[str], ScriptedChannel] | None = None
    mesh: SshSettings | None = None
    scheduler: SchedulerView | None = None
    calls: list[Call] = field(default_factory=list)
    closed: bool = False
    #: Where the hosts came from, as reports name it.
    hostfile: str = ""
    #: Launch lines run inside what closing releases (as under an allocation clusterkit asked for).
    launch_while_open: bool = False

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def describe(self) -> str:
        return f"{len(self.hosts)} fake nodes"

    def _each(self, kind: str, hosts: Sequence[str] | None, detail: Any, answer: Callable[[str], Any],
              progress: ProgressListener | None) -> GroupResult[Any]:
        chosen = list(hosts if hosts is not None else self.names)
        self.calls.append(Call(kind, chosen, detail))
        group: GroupResult[Any] = GroupResult()
        for host in chosen:
            if host in self.timeouts:
                group[host] = HostResult(host, error=f"{host} gave no answer within the deadline",
                                         fix=f"check {host} by hand")
            else:
                try:
                    group[host] = HostResult(host, value=answer(host))
                except Exception as exc:
                    group[host] = HostResult(host, error=str(exc), fix=getattr(exc, "fix", None))
            if progress is not None:
                progress.update(host, "ok" if group[host].ok else "failed", group[host].error or "")
        return group

    def run(self, command: str, timeout_s: float, *, hosts: Sequence[str] | None = None,
            progress: ProgressListener | None = None) -> GroupResult[CommandOutput]:
        return self._each("run", hosts, command, lambda h: self.on_run(h, command), progress)

    def run_agent(self, args: Sequence[str], timeout_s: float, *, python: str | None = None,
                  per_host_args: Mapping[str, Sequence[str]] | None = None, hosts: Sequence[str] | None = None,
                  progress: ProgressListener | None = None) -> GroupResult[AgentReply]:
        def answer(host: str) -> AgentReply:
            full = [*args, *(per_host_args or {}).get(host, [])]
            return AgentReply(self.on_agent(host, full), node_clock=time.time(), received_at=time.time())
        return self._each("agent", hosts, list(args), answer, progress)

    def agent_streams(self, args: Sequence[str], on_line: Callable[[str, str, float], None],
                      on_state: Callable[..., None], *, stale_after_s: float,
                      lost_after_s: float) -> list[HostStream]:
        """Real line streams over scripted channels (``on_stream(host)``; default: one that ends at once)."""
        self.calls.append(Call("agent_streams", self.names, list(args)))
        script = self.on_stream or (lambda host: ScriptedChannel([], why="nothing scripted"))
        return [LineStream(h, "agent " + " ".join(args), lambda host, _command: script(host), on_line, on_state,
                           stale_after_s=stale_after_s, lost_after_s=lost_after_s,
                           backoff=Backoff(initial_s=0.05, max_s=0.2)) for h in self.names]

    def put(self, source: Path, remote: RemoteFile, timeout_s: float, *, hosts: Sequence[str] | None = None,
            options: BroadcastOptions | None = None) -> GroupResult[Delivery]:
        def answer(host: str) -> Delivery:
            delivery = self.on_put(host, remote) if self.on_put else Delivery(host, ok=True, sent_bytes=remote.size)
            if not delivery.ok:
                raise RuntimeError(delivery.error or f"no copy on {host}")
            return delivery
        return self._each("put", hosts, remote, answer, None)

    def launch_line(self, plan: LaunchPlan, hosts: Sequence[ActiveHost], style: LaunchStyle) -> LaunchLine:
        self.calls.append(Call("launch_line", [h.name for h in hosts], plan))
        return LaunchLine(build_launch_line(plan), while_open=self.launch_while_open)

    def cleanup(self, run_id: str, timeout_s: float, *, hosts: Sequence[str] | None = None) -> GroupResult[str]:
        return self._each("cleanup", hosts, run_id, lambda h: "", None)

    def ssh_mesh(self) -> SshSettings | None:
        return self.mesh

    def scheduler_view(self, timeout_s: float) -> SchedulerView | None:
        return self.scheduler

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeNodes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
