"""The one interface every feature reaches nodes through, whatever the transport.

A command builds a :class:`~clusterkit.cluster.target.Target` from its arguments once and opens it with
:func:`clusterkit.cluster.open_nodes`, which is the only place that looks at the transport. Features
(survey, doctor, launch, workloads, env push and verify, monitor) take a :class:`Nodes` and never ask
which implementation it is: SSH (:mod:`clusterkit.cluster.ssh`), Slurm (:mod:`clusterkit.cluster.slurm`)
or this machine without SSH (:mod:`clusterkit.cluster.local`). What only one transport can do is a
capability that is ``None`` elsewhere (:meth:`Nodes.ssh_mesh`), not an ``isinstance`` test.

Every call has a deadline, answers per host (:class:`~clusterkit.cluster.result.GroupResult`) in the
order asked, and reports progress to an optional listener; none prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Self

from clusterkit.cluster.remote.fanout import ProgressListener
from clusterkit.cluster.result import CommandOutput, GroupResult
from clusterkit.cluster.shell import kill_by_run_id_command

if TYPE_CHECKING:
    from types import TracebackType

    from clusterkit.cluster.remote.agent import AgentReply
    from clusterkit.cluster.remote.ssh import SshSettings
    from clusterkit.cluster.remote.stream import StreamState
    from clusterkit.cluster.remote.transfer import Delivery, HopEvent, RemoteFile
    from clusterkit.core.inventory import ActiveHost
    from clusterkit.core.launchline import LaunchPlan

__all__ = ["BroadcastOptions", "CommandOutput", "GroupResult", "HostStream", "LaunchLine", "LaunchStyle",
           "Nodes", "ProgressListener", "SchedulerView"]


class HostStream(Protocol):
    """One host's long-running command (the monitor's sampler): lines and states go to callbacks."""

    host: str

    @property
    def state(self) -> StreamState: ...
    def start(self) -> None: ...
    def request_stop(self) -> None: ...
    def stop(self, timeout_s: float = 2.0) -> bool: ...


LineCallback = Callable[[str, str, float], None]
"""``on_line(host, line, received_at)``."""
StateCallback = Callable[["StreamState"], None]


@dataclass(frozen=True)
class BroadcastOptions:
    """How a file is put on many nodes (each transport uses what applies to it)."""

    #: Seconds a relay hop may go without progress before it is given up (SSH relay).
    stall_s: float = 30.0
    max_rounds: int = 3
    #: The Python on the nodes that runs the relay's hop (SSH relay).
    python: str = "python3"
    #: Progress of each hop (bytes, done, failed) for a progress view.
    listener: Callable[[HopEvent], None] | None = None
    #: ``(round, hosts, bytes)`` when a round starts.
    round_listener: Callable[[int, list[str], int], None] | None = None
    #: A node that sees ``source`` itself where it lies (the same absolute path, size and modification
    #: time: a filesystem shared with this machine) may read it there: nothing is sent, and its
    #: ``Delivery.path`` says so. Where the copy reaches every node of a job anyway (sbcast) and on this
    #: machine; the relay, which sends only to the nodes asked, sends all the same.
    in_place: bool = False
    #: One line when the copy starts, saying how it goes (the relay's route, sbcast, read in place).
    phase: Callable[[str], None] | None = None


@dataclass(frozen=True)
class LaunchStyle:
    """How a launch line is to run, beyond the plan: what the caller needs of its output and its life."""

    #: Each output line says which node it came from (workloads read rank lines per node).
    labelled: bool = True
    #: The ranks' working directory on every node.
    cwd: str = ""
    #: More arguments for the launcher (pdsh's, srun's): DeepSpeed's ``--launcher_args``.
    launcher_args: str = ""
    #: CPUs each rank's task may use (Slurm's ``--cpus-per-task``); None: the transport's default.
    cpus_per_task: int | None = None
    #: Variables every rank gets beyond what DeepSpeed's runner exports (``PYTHONPATH`` with the launch
    #: directory first, ``.deepspeed_env``), which every transport gives the ranks as the runner would.
    exports: Mapping[str, str] = field(default_factory=dict)
    #: Directories every rank gets first on its ``PYTHONPATH``, before the launching shell's (after the
    #: launch directory DeepSpeed's runner puts first): the stack hook of ``clusterkit launch``.
    pythonpath_first: tuple[str, ...] = ()
    #: The ranks may share the job's resources with its other steps (Slurm's ``--overlap``: a clean-up or a
    #: second run beside this one); nothing elsewhere, where no scheduler holds the resources.
    overlap: bool = False
    #: The line is for later (printed), to run after the nodes are closed: it names nothing their closing
    #: releases (under Slurm, no ``--jobid`` of an allocation clusterkit asked for).
    outlives_nodes: bool = False


def launch_env(style: LaunchStyle, pythonpath: str | None) -> dict[str, str]:
    """The launching process's extra environment: ``style.exports``, and ``PYTHONPATH`` with
    ``style.pythonpath_first`` right after the launch directory on the one the ranks would get otherwise
    (the exports', else ``pythonpath``, the launching shell's), which the runner passes on."""
    env = dict(style.exports)
    if style.pythonpath_first:
        env["PYTHONPATH"] = pythonpath_with(style.pythonpath_first, style.exports.get("PYTHONPATH") or pythonpath,
                                            style.cwd)
    return env


def pythonpath_with(first: Sequence[str], pythonpath: str | None, cwd: str = "") -> str:
    """``first`` on ``pythonpath``, after ``cwd`` (the launch directory, first as DeepSpeed's runner puts it)
    where one is given."""
    rest = [p for p in (pythonpath or "").split(":") if p]
    if cwd and rest[:1] == [cwd]:
        rest = rest[1:]
    return ":".join([*([cwd] if cwd else []), *first, *rest])


@dataclass(frozen=True)
class LaunchLine:
    """A command that starts DeepSpeed's per-node launcher on each chosen host."""

    argv: list[str]
    #: Which node each labelled task number is (srun labels lines ``0: ...``); None: lines name their host.
    task_nodes: list[str] | None = None
    #: Extra environment for the launching process.
    env: dict[str, str] = field(default_factory=dict)
    #: It runs inside what the nodes hold and their closing releases (an allocation clusterkit asked for):
    #: run it as a child while they stay open, not in place of this process.
    while_open: bool = False


@dataclass(frozen=True)
class SchedulerView:
    """What the scheduler says of the nodes (Slurm's node states and reasons, the job), if there is one."""

    facts: object
    #: Nodes the scheduler will not run on, with why (drained, down...).
    unusable: dict[str, str] = field(default_factory=dict)
    #: What to run about an unusable node (how to see it, how to return it to service).
    fixes: dict[str, str] = field(default_factory=dict)


class Nodes(Protocol):
    """The hosts of one command, reachable through one transport, opened once."""

    #: ``ssh``, ``slurm`` or ``local``: for messages and records only, never for branching.
    transport: str

    @property
    def hosts(self) -> list[ActiveHost]:
        """The active hosts and their slots, in the order the launcher ranks them."""

    @property
    def names(self) -> list[str]:
        """``hosts``' names."""

    def describe(self) -> str:
        """How the nodes are reached, for progress titles: ``3 nodes over SSH``, ``srun in job 42``."""

    def run(self, command: str, timeout_s: float, *, hosts: Sequence[str] | None = None,
            progress: ProgressListener | None = None) -> GroupResult[CommandOutput]:
        """Run the shell ``command`` once on each host; its output and exit status per host, whatever the
        status. ``CLUSTERKIT_NODE`` holds the host's name as the command sees it."""

    def run_agent(self, args: Sequence[str], timeout_s: float, *, python: str | None = None,
                  per_host_args: Mapping[str, Sequence[str]] | None = None, hosts: Sequence[str] | None = None,
                  progress: ProgressListener | None = None) -> GroupResult[AgentReply]:
        """Run clusterkit's agent (shipped where missing) with ``args`` (+ ``per_host_args[host]``) and
        return its typed reply per host."""

    def agent_streams(self, args: Sequence[str], on_line: LineCallback, on_state: StateCallback, *,
                      stale_after_s: float, lost_after_s: float) -> list[HostStream]:
        """One stream per host of the agent run with ``args`` (``stream ...``), not yet started; a lost
        host is reconnected by its stream with backoff."""

    def put(self, source: Path, remote: RemoteFile, timeout_s: float, *, hosts: Sequence[str] | None = None,
            options: BroadcastOptions | None = None) -> GroupResult[Delivery]:
        """A verified copy of ``source`` at ``remote.path`` on each host (a relay, sbcast, or a copy).
        A host that got none is an error whose value, where there is one, still says what was sent."""

    def launch_line(self, plan: LaunchPlan, hosts: Sequence[ActiveHost], style: LaunchStyle) -> LaunchLine:
        """The line that runs DeepSpeed's launcher for ``plan`` on ``hosts`` through this transport."""

    def cleanup(self, run_id: str, timeout_s: float, *, hosts: Sequence[str] | None = None) -> GroupResult[str]:
        """Kill what is left of run ``run_id`` (processes carrying it in their command line) on each host."""

    def ssh_mesh(self) -> SshSettings | None:
        """How nodes log in to each other over SSH (the survey's mesh probe), where the transport is SSH;
        None elsewhere (ranks started by srun or on this machine need no SSH between nodes)."""

    def scheduler_view(self, timeout_s: float) -> SchedulerView | None:
        """The scheduler's view of the nodes (Slurm), or None where there is no scheduler."""

    def close(self) -> None:
        """Release what opening took (an allocation clusterkit asked for, warm connections)."""

    def __enter__(self) -> Nodes: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    @property
    def hostfile(self) -> str:
        """Where the hosts came from, for reports and findings: the hostfile's path as given, or
        ``slurm job 42`` for an allocation ("" for this machine named by no hostfile)."""


class NodesBase:
    """What every implementation does alike on top of its own ``run``: choosing hosts, cleaning up a run by
    its id, and closing when used as a context manager."""

    @property
    def names(self) -> list[str]:
        raise NotImplementedError

    def run(self, command: str, timeout_s: float, *, hosts: Sequence[str] | None = None,
            progress: ProgressListener | None = None) -> GroupResult[CommandOutput]:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing is held unless the implementation says otherwise."""

    def _chosen(self, hosts: Sequence[str] | None) -> list[str]:
        return list(hosts) if hosts is not None else self.names

    def cleanup(self, run_id: str, timeout_s: float, *, hosts: Sequence[str] | None = None) -> GroupResult[str]:
        """Kill what is left of run ``run_id`` on each host; per host what the kill said."""
        done = self.run(kill_by_run_id_command(run_id), timeout_s, hosts=hosts)
        return done.then(lambda host, out: out.stdout.strip() or out.tail())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
