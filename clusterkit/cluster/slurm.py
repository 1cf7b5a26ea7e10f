"""Nodes through Slurm: one ``srun`` step per call across the allocation's nodes (sharing the job's
resources), files by ``sbcast``, launches by srun running DeepSpeed's per-node launcher
(:mod:`clusterkit.core.slurmlaunch`). The head's cost is a couple of processes however many nodes there are,
and nodes need no sshd (``pam_slurm_adopt`` clusters refuse SSH to nodes a user holds no job on)."""

from __future__ import annotations

import os
import shlex
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from clusterkit.cluster.nodes import (
    BroadcastOptions,
    HostStream,
    LaunchLine,
    LaunchStyle,
    LineCallback,
    NodesBase,
    ProgressListener,
    SchedulerView,
    StateCallback,
    launch_env,
    pythonpath_with,
)
from clusterkit.cluster.remote.agent import AgentReply
from clusterkit.cluster.remote.slurm import (
    Allocation,
    SlurmError,
    TaskOutput,
    read_nodes,
    release_allocation,
    run_on_nodes,
    slurm_command,
    step_environment,
)
from clusterkit.cluster.remote.slurm_agent import run_agent_on_nodes
from clusterkit.cluster.remote.ssh import SshSettings
from clusterkit.cluster.remote.stream import LineStream
from clusterkit.cluster.remote.transfer import Delivery, RemoteFile
from clusterkit.cluster.result import CommandOutput, GroupResult, HostResult
from clusterkit.core.dsenv import deepspeed_env_values
from clusterkit.core.inventory import ActiveHost, HostEntry, Hostfile
from clusterkit.core.launchline import DEFAULT_MASTER_PORT, LaunchPlan, build_launch_line, selection_for
from clusterkit.core.slurmlaunch import DEEPSPEED_SLURM_LAUNCHER, SrunPlan, build_srun_line, runner_exports
from clusterkit.core.slurmstate import slurm_facts, unusable
from clusterkit.node.facts import Maybe, SlurmFacts, SlurmNodeFacts, Unavailable
from clusterkit.node.relay_hop import human as human_bytes

if TYPE_CHECKING:
    pass


#: How long putting the agent on the nodes for their streams may take.
AGENT_PLACING_TIMEOUT_S = 60.0
#: States in which a node runs no task at all (a draining node still runs its job's steps).
NO_TASKS = ("DOWN", "NOT_RESPONDING", "FAIL", "POWERED_DOWN", "POWERING_DOWN")
SLURM_COMMAND_TIMEOUT_S = 20.0


def allocation_hostfile(alloc: Allocation) -> Hostfile:
    """The allocation as a hostfile (node order is node rank; slots from the job's GPUs or tasks)."""
    source = f"slurm job {alloc.job_id}"
    return Hostfile(source, tuple(HostEntry(node, alloc.slots(node), i + 1) for i, node in enumerate(alloc.nodes)))


def hostfile_text(alloc: Allocation, slots: int | None = None) -> str:
    """A DeepSpeed hostfile for the allocation (``slots`` on every node instead of the allocation's)."""
    lines = [f"# from slurm job {alloc.job_id} ({alloc.job.partition or 'default partition'})"]
    lines += [f"{node} slots={slots or alloc.slots(node)}" for node in alloc.nodes]
    return "\n".join(lines) + "\n"


def read_slurm_facts(alloc: Allocation, timeout_s: float = SLURM_COMMAND_TIMEOUT_S) -> SlurmFacts:
    """The job, and every node of its partition(s) with state and reason; a failed command is a value."""
    version: Maybe[str]
    try:
        version = slurm_command(["scontrol", "--version"], timeout_s).strip().removeprefix("slurm ")
    except SlurmError as exc:
        version = Unavailable(str(exc))
    nodes: Maybe[list[SlurmNodeFacts]]
    try:
        partition = alloc.job.partition
        every = read_nodes(timeout_s, partition or None)
        wanted = set(alloc.nodes)
        nodes = [n for n in every if n.name in wanted or not partition or partition in n.partitions]
    except SlurmError as exc:
        nodes = Unavailable(str(exc))
    return slurm_facts(version, alloc.job, nodes, alloc.nodes)


def blocked_nodes(slurm: SlurmFacts, names: Sequence[str]) -> dict[str, SlurmNodeFacts]:
    """The nodes among ``names`` that Slurm will run no task on."""
    if isinstance(slurm.nodes, Unavailable):
        return {}
    return {n.name: n for n in slurm.nodes
            if n.name in names and any(state in NO_TASKS for state in unusable(n))}


def why_blocked(node: SlurmNodeFacts) -> str:
    reason = f": {node.reason}" if node.reason else ""
    by = f" (set by {node.reason_user} at {node.reason_time})" if node.reason_user else ""
    return f"Slurm says {node.name} is {node.state}{reason}{by}; no task was started there"


def allocation_hosts(alloc: Allocation) -> list[ActiveHost]:
    """The allocation's nodes as active hosts: node order is node rank; slots from its GPUs or tasks."""
    return [ActiveHost(node, tuple(range(alloc.slots(node))), HostEntry(node, alloc.slots(node), i + 1))
            for i, node in enumerate(alloc.nodes)]


def first_address(host: str) -> str | None:
    """``host``'s address as this machine resolves it (the master when the preflight chose none)."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


def command_output(task: TaskOutput) -> CommandOutput:
    return CommandOutput(task.exit_code if task.exit_code is not None else 255, "\n".join(task.stdout),
                         "\n".join(task.stderr), task.finished_at)


SBCAST_SUFFIX = ".ck-sbcast"
PUT_HAVE, PUT_NEED, PUT_NO_DIR = "have", "need", "no-dir"
_PUT = "@@ck-put"


def put_probe_command(remote: RemoteFile, source_path: str) -> str:
    """Per node: make ``remote.path``'s directory, say whether the node holds the file already (size and
    sha256), needs it, or cannot write there; and the size and mtime of ``source_path`` if it sees it."""
    p, d = shlex.quote(remote.path), shlex.quote(str(Path(remote.path).parent))
    return (f'p={p}; if ! {{ mkdir -p {d} 2>/dev/null && [ -w {d} ]; }}; then echo "{_PUT} {PUT_NO_DIR}"; '
            f'elif [ -f "$p" ] && [ "$(stat -c %s "$p")" = {remote.size} ] '
            f'&& [ "$(sha256sum < "$p" | cut -d" " -f1)" = {remote.sha256} ]; then echo "{_PUT} {PUT_HAVE}"; '
            f'else echo "{_PUT} {PUT_NEED}"; fi; '
            f"printf '{_PUT}-sees '; stat -L -c '%s %Y' {shlex.quote(source_path)} 2>/dev/null || echo")


def read_put_probe(stdout: str, size: int, mtime: int) -> tuple[str, bool]:
    """A node's probe: what it holds (``PUT_HAVE``/``PUT_NEED``/``PUT_NO_DIR``), and whether it sees the
    source where it lies (same size and mtime)."""
    state, sees = PUT_NEED, False
    for line in stdout.splitlines():
        if line.startswith(f"{_PUT}-sees "):
            sees = line.split()[1:] == [str(size), str(mtime)]
        elif line.startswith(f"{_PUT} "):
            state = line.split()[1]
    return state, sees


class SlurmNodes(NodesBase):
    """The nodes of one Slurm allocation (``hosts``: all of them, or those chosen by --include/--exclude)."""

    transport = "slurm"

    def __init__(self, alloc: Allocation, hosts: Sequence[ActiveHost] | None = None, *,
                 environ: Mapping[str, str] | None = None, agent_dir: str | None = None) -> None:
        self.alloc = alloc
        self._every = allocation_hosts(alloc)
        self._hosts = list(hosts) if hosts is not None else self._every
        self.environ = dict(os.environ if environ is None else environ)
        #: A directory every node sees (a shared filesystem): the agent is unpacked there once, not broadcast.
        self.agent_dir = agent_dir

    @property
    def hosts(self) -> list[ActiveHost]:
        return list(self._hosts)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self._hosts]

    def describe(self) -> str:
        return f"slurm job {self.alloc.job_id} ({len(self._hosts)} node(s) through srun)"

    def run(self, command: str, timeout_s: float, *, hosts: Sequence[str] | None = None,
            progress: ProgressListener | None = None) -> GroupResult[CommandOutput]:
        line = f'export CLUSTERKIT_NODE="$SLURMD_NODENAME"; {command}'
        done = run_on_nodes(self.alloc, line, timeout_s, self._chosen(hosts), progress, environ=self.environ)
        return GroupResult.of(done.values()).then(lambda host, task: command_output(task))

    def run_agent(self, args: Sequence[str], timeout_s: float, *, python: str | None = None,
                  per_host_args: Mapping[str, Sequence[str]] | None = None, hosts: Sequence[str] | None = None,
                  progress: ProgressListener | None = None) -> GroupResult[AgentReply]:
        done = run_agent_on_nodes(self.alloc, args, timeout_s, self._chosen(hosts), python, per_host_args,
                                  progress, self.agent_dir, self.environ)
        return GroupResult.of(done.values())

    def agent_streams(self, args: Sequence[str], on_line: LineCallback, on_state: StateCallback, *,
                      stale_after_s: float, lost_after_s: float) -> list[HostStream]:
        """One srun step per host (beside the job's own), the agent put in place first where it is missing;
        a node where it could not be put shows its stream failing with srun's words."""
        from clusterkit.cluster.remote.slurm_stream import SlurmStreamOpener, ensure_agent, node_agent_command

        ensure_agent(self.alloc, AGENT_PLACING_TIMEOUT_S, self.names, self.environ)
        opener = SlurmStreamOpener(self.alloc, self.environ)
        command = node_agent_command(list(args), self.environ)
        return [LineStream(h, command, opener, on_line, on_state, stale_after_s=stale_after_s,
                           lost_after_s=lost_after_s) for h in self.names]

    def put(self, source: Path, remote: RemoteFile, timeout_s: float, *, hosts: Sequence[str] | None = None,
            options: BroadcastOptions | None = None) -> GroupResult[Delivery]:
        """``sbcast`` into a scratch name beside ``remote.path`` (its directory made first, on every node of
        this command: sbcast writes to all of the job's), each node's copy checked (size and sha256) and
        renamed into place; nodes already holding it are left alone. With ``options.in_place``, when every
        node that needs it sees ``source`` itself where it lies, nothing is sent."""
        options = options or BroadcastOptions()
        say = options.phase or (lambda _text: None)
        chosen = self._chosen(hosts)
        if not chosen:
            return GroupResult()
        deadline = time.monotonic() + timeout_s
        head_path = str(source.resolve())
        stat = source.stat()
        others = [n for n in self.names if n not in chosen]
        # The others only need the directory sbcast writes into; a dead one of them costs a short wait.
        with ThreadPoolExecutor(1) as pool:
            making = pool.submit(self.run, f"mkdir -p {shlex.quote(str(Path(remote.path).parent))}",
                                 min(timeout_s, SLURM_COMMAND_TIMEOUT_S), hosts=others) if others else None
            probed = self.run(put_probe_command(remote, head_path), timeout_s, hosts=chosen)
            made = making.result() if making is not None else GroupResult[CommandOutput]()
        results: dict[str, HostResult[Delivery]] = {}
        states: dict[str, str] = {}
        seeing: dict[str, bool] = {}
        for host in chosen:
            probe = probed[host]
            if probe.value is None or not probe.ok:
                why = probe.error or "no answer"
                results[host] = HostResult(host, value=Delivery(host, ok=False, error=why), error=why, fix=probe.fix)
                continue
            states[host], seeing[host] = read_put_probe(probe.value.stdout, stat.st_size, int(stat.st_mtime))
            if states[host] == PUT_HAVE:
                results[host] = HostResult(host, value=Delivery(host, ok=True, notes=["already there"]))
        wanting = [h for h in states if states[h] != PUT_HAVE]
        if wanting and options.in_place and all(seeing[h] for h in wanting):
            say(f"archive read where it lies: {head_path} (nodes see it, same size and time): nothing sent")
            note = f"{head_path} is on a filesystem shared with this machine: read in place, nothing sent"
            for host in wanting:
                results[host] = HostResult(host, value=Delivery(host, ok=True, notes=[note], path=head_path))
            wanting = []
        directory = str(Path(remote.path).parent)
        for host in [h for h in wanting if states[h] == PUT_NO_DIR]:
            why = f"cannot create {directory} on {host} (writable by this user?)"
            fix = f"on {host}: create {directory} writable by this user, or choose another directory"
            results[host] = HostResult(host, value=Delivery(host, ok=False, error=why, fix=fix), error=why, fix=fix)
        need = [h for h in wanting if states[h] == PUT_NEED]
        if need:
            say(f"sbcast {human_bytes(remote.size)} to job {self.alloc.job_id}'s {len(self.alloc.nodes)} node(s) "
                f"-> {remote.path}, then each copy's sha256")
            results.update(self._sbcast(source, remote, need, deadline))
            # sbcast wrote its scratch copy on every node: gone where it was not wanted (after the renames,
            # which a shared directory's one copy must not lose).
            spare = [h for h in chosen if h not in need and probed[h].ok] + [h for h in others if made[h].ok]
            if spare:
                self.run(f"rm -f {shlex.quote(remote.path + SBCAST_SUFFIX)}", SLURM_COMMAND_TIMEOUT_S, hosts=spare)
        return GroupResult.of(results[h] for h in chosen)

    def _sbcast(self, source: Path, remote: RemoteFile, need: list[str], deadline: float
                ) -> dict[str, HostResult[Delivery]]:
        path = shlex.quote(remote.path)
        scratch = remote.path + SBCAST_SUFFIX
        sbcast_error = ""
        try:
            # sbcast reaches every node of the job (it takes no node list): the others' copies are removed after.
            slurm_command(["sbcast", f"--jobid={self.alloc.job_id}", "--force", "--preserve", str(source), scratch],
                          max(5.0, deadline - time.monotonic()), step_environment(self.environ))
        except SlurmError as exc:  # the nodes' checks below say which copies are missing
            sbcast_error = str(exc)
        q = shlex.quote(scratch)
        settle = (f's={q}; if [ "$(sha256sum < "$s" 2>/dev/null | cut -d" " -f1)" = {remote.sha256} ]; '
                  f'then mv -f "$s" {path} && echo placed; '
                  # a directory shared with another node of ``need``, which renamed the one copy first
                  f'elif [ "$(sha256sum < {path} 2>/dev/null | cut -d" " -f1)" = {remote.sha256} ]; then echo placed; '
                  f'else rm -f "$s"; echo bad; fi')
        settled = self.run(settle, max(5.0, deadline - time.monotonic()), hosts=need)
        results: dict[str, HostResult[Delivery]] = {}
        for host in need:
            out = settled[host]
            if out.value is not None and out.value.stdout.strip().endswith("placed"):
                results[host] = HostResult(host, value=Delivery(
                    host, ok=True, sent_bytes=remote.size, rounds=1,
                    notes=[f"sbcast copy checked (sha256 {remote.sha256[:16]}...)"]))
                continue
            why = out.error or f"sbcast left no good copy of {remote.path} on {host}" + (
                f" ({sbcast_error})" if sbcast_error else "")
            fix = out.fix or f"is there room in {Path(remote.path).parent} on {host}? scontrol show node {host}"
            results[host] = HostResult(host, value=Delivery(host, ok=False, rounds=1, error=why, fix=fix),
                                       error=why, fix=fix)
        return results

    def launch_line(self, plan: LaunchPlan, hosts: Sequence[ActiveHost], style: LaunchStyle) -> LaunchLine:
        """srun running DeepSpeed's per-node launcher on each node, node rank from ``SLURM_NODEID``, with
        what DeepSpeed's runner would export and every CPU the job holds on a node unless told; or, for
        ``plan.launcher`` ``slurm``, DeepSpeed's own Slurm launcher over a hostfile of the allocation.
        The master is the first node's address (port 29500) unless the plan names one."""
        chosen = list(hosts)
        plan = replace(plan, master_addr=plan.master_addr or first_address(chosen[0].name),
                       master_port=DEFAULT_MASTER_PORT if plan.master_port is None else plan.master_port)
        if plan.launcher == DEEPSPEED_SLURM_LAUNCHER:
            # DeepSpeed's runner exports this environment's PYTHON* variables to every rank (srun --export=ALL).
            return LaunchLine(self._deepspeed_slurm_line(plan, chosen, style),
                              env=launch_env(style, self.environ.get("PYTHONPATH")), while_open=self.alloc.owned)
        cwd = style.cwd or str(Path.cwd())
        gpus = min((self.alloc.job.gpus_per_node.get(h.name, 0) for h in chosen), default=0)
        cpus = style.cpus_per_task or min((self.alloc.job.cpus_per_node.get(h.name, 0) for h in chosen),
                                          default=0) or None
        exports = {**runner_exports(cwd, self.environ.get("PYTHONPATH"),
                                    deepspeed_env_values(cwd, self.environ.get("HOME"))), **style.exports}
        if style.pythonpath_first:
            exports["PYTHONPATH"] = pythonpath_with(style.pythonpath_first, exports["PYTHONPATH"], cwd)
        flags = ("--label" if style.labelled else "", "--overlap" if style.overlap else "", style.launcher_args)
        srun_args = " ".join(a for a in flags if a)
        # A line printed for later runs in whichever allocation it is run inside, not in one released by then.
        job_id = None if style.outlives_nodes and self.alloc.owned else self.alloc.job_id
        line = build_srun_line(SrunPlan(plan, chosen, cwd, job_id=job_id, cpus_per_task=cpus, gpus_per_node=gpus,
                                        exports=exports, srun_args=srun_args))
        return LaunchLine(line, [h.name for h in chosen] if style.labelled else None, while_open=self.alloc.owned)

    def _deepspeed_slurm_line(self, plan: LaunchPlan, chosen: list[ActiveHost], style: LaunchStyle) -> list[str]:
        """DeepSpeed's runner with ``--launcher slurm`` (it runs srun itself, from this machine), reading a
        hostfile written from the allocation and filtered to ``chosen``."""
        path = Path(tempfile.gettempdir()) / f"clusterkit-slurm-{self.alloc.job_id}.hostfile"
        path.write_text(hostfile_text(self.alloc), encoding="utf-8")
        include, exclude = selection_for(plan, chosen, self._hosts, self._every)
        return build_launch_line(replace(plan, hostfile=str(path), include=include, exclude=exclude,
                                         launcher_args=style.launcher_args or plan.launcher_args,
                                         force_multi=False, no_ssh_check=True))

    def ssh_mesh(self) -> SshSettings | None:
        return None

    def scheduler_view(self, timeout_s: float) -> SchedulerView | None:
        facts = read_slurm_facts(self.alloc, timeout_s)
        blocked = blocked_nodes(facts, self.names)
        return SchedulerView(facts, {n: why_blocked(node) for n, node in blocked.items()},
                             {n: f"scontrol show node {n}; once it is fixed: scontrol update NodeName={n} State=RESUME"
                              for n in blocked})

    def close(self) -> None:
        """Release the allocation if clusterkit asked for it."""
        if self.alloc.owned:
            release_allocation(self.alloc)


    @property
    def hostfile(self) -> str:
        """The allocation in reports: ``slurm job 42``."""
        return allocation_hostfile(self.alloc).path
