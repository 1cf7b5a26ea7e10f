"""The survey over Slurm: the same facts and probes as over SSH, gathered by two srun steps.

1. Slurm's own view, on the head: the job, its nodes' states and the reasons admins gave
   (``scontrol show node``, ``sinfo -R``). Nodes Slurm already knows are down or not responding get
   no task (a step there would only wait for them); they are reported with Slurm's reason.
2. A one-task step on the first node: its ``hostname -I`` (the address DeepSpeed picks) and, for an
   automatic port, a free one.
3. One step with a task per node running the agent: the facts, and the master-port probe (the first
   node holds the port, every node connects to it), as :mod:`clusterkit.survey` does over SSH.

SSH between nodes is not probed: ranks started by srun need none.
"""

from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Sequence

from rich.console import Console

from clusterkit.facts import (
    ClusterProbes,
    CollectReply,
    MasterProbe,
    Maybe,
    NodeFacts,
    SlurmFacts,
    SlurmNodeFacts,
    Unavailable,
)
from clusterkit.facts_codec import FactsDecodeError, from_jsonable
from clusterkit.inventory import ActiveHost, HostEntry, Hostfile
from clusterkit.launchsite import launch_place
from clusterkit.progress import NodeProgress
from clusterkit.remote.slurm import Allocation, SlurmError, read_nodes, run_on_nodes, slurm_command
from clusterkit.remote.slurm_agent import run_agent_on_nodes
from clusterkit.slurmstate import slurm_facts, unusable
from clusterkit.survey import (
    AUTO_PORT,
    DEFAULT_MASTER_PORT,
    LAUNCH_SECTIONS,
    PICK_PORT_SCRIPT,
    SurveyOptions,
    clock_offset,
    collect_here,
    note_unanswered,
)

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


def _blocked(slurm: SlurmFacts, names: Sequence[str]) -> dict[str, SlurmNodeFacts]:
    """The nodes among ``names`` that Slurm will run no task on."""
    if isinstance(slurm.nodes, Unavailable):
        return {}
    return {n.name: n for n in slurm.nodes
            if n.name in names and any(state in NO_TASKS for state in unusable(n))}


def _why_blocked(node: SlurmNodeFacts) -> str:
    reason = f": {node.reason}" if node.reason else ""
    by = f" (set by {node.reason_user} at {node.reason_time})" if node.reason_user else ""
    return f"Slurm says {node.name} is {node.state}{reason}{by}; no task was started there"


def _master_step(alloc: Allocation, first: str, options: SurveyOptions, timeout_s: float
                 ) -> tuple[list[str], int, str]:
    """The first node's addresses (``hostname -I``) and the port to probe; an error text if none."""
    command = "hostname -I"
    if options.master_port == AUTO_PORT:
        pick = shlex.quote(PICK_PORT_SCRIPT)
        command += f"; {{ {shlex.quote(options.python)} -c {pick} || python3 -c {pick}; }} 2>/dev/null"
    result = run_on_nodes(alloc, command, timeout_s, [first])[first]
    if not result.ok or result.value is None:
        return [], DEFAULT_MASTER_PORT, result.error or f"no answer from {first}"
    lines = result.value.stdout
    addresses = lines[0].split() if lines else []
    if options.master_addr:
        addresses = [options.master_addr] + [a for a in addresses if a != options.master_addr]
    if not addresses:
        return [], DEFAULT_MASTER_PORT, f"`hostname -I` on {first} printed no address"
    if options.master_port != AUTO_PORT:
        return addresses, options.master_port, ""
    if len(lines) > 1 and lines[1].strip().isdigit():
        return addresses, int(lines[1]), ""
    return [], DEFAULT_MASTER_PORT, f"no free port found on {first} (no Python 3 there?)"


def survey_over_slurm(hosts: Sequence[ActiveHost], alloc: Allocation, options: SurveyOptions,
                      console: Console | None = None, agent_dir: str | None = None
                      ) -> tuple[dict[str, Maybe[NodeFacts]], ClusterProbes]:
    """Every node's facts and the rendezvous probe through srun; a dead or frozen node costs one timeout."""
    console = console or Console(stderr=True)
    names = [h.name for h in hosts]
    place = launch_place(names)
    launch: dict[str, Maybe[NodeFacts]] = {}
    here = threading.Thread(target=lambda: launch.setdefault("facts", collect_here(options, LAUNCH_SECTIONS)),
                            name="collect:launching-machine", daemon=True)
    here.start()
    slurm = read_slurm_facts(alloc)
    blocked = _blocked(slurm, names)
    runnable = [n for n in names if n not in blocked]
    facts: dict[str, Maybe[NodeFacts]] = {n: Unavailable(_why_blocked(blocked[n])) for n in blocked}
    fixes = {n: f"scontrol show node {n}; once it is fixed: scontrol update NodeName={n} State=RESUME"
             for n in blocked}
    offsets: dict[str, Maybe[float]] = {n: Unavailable("no task on this node") for n in blocked}
    master: Maybe[MasterProbe] = Unavailable("probes skipped")
    step_timeout = options.timeout_s + 15
    with NodeProgress(names, "surveying over Slurm" if options.probes else "collecting facts over Slurm",
                      console) as progress:
        for node in blocked:
            progress.update(node, "failed", blocked[node].state)
        addresses: list[str] = []
        port = options.master_port
        master_error = "no node to probe" if not runnable else ""
        args = options.collect_args()
        per_node: dict[str, list[str]] = {}
        if options.probes and runnable:
            addresses, port, master_error = _master_step(alloc, runnable[0], options, min(30.0, step_timeout))
            if addresses:
                per_node[runnable[0]] = ["--listen-port", str(port), "--listen-expect", str(len(runnable)),
                                         "--listen-seconds", f"{min(options.timeout_s, 15.0):g}"]
                args += ["--connect", f"{addresses[0]}:{port}",
                         "--connect-timeout", f"{max(2.0, min(options.timeout_s, 15.0) - 3):g}"]
        for node in runnable:
            progress.update(node, "collecting")
        replies = run_agent_on_nodes(alloc, args, step_timeout, runnable, python=options.python,
                                     per_node=per_node, progress=progress, agent_dir=agent_dir) if runnable else {}
    here.join(options.timeout_s)
    readings: dict[str, CollectReply] = {}
    for name, result in replies.items():
        if result.ok and result.value is not None:
            try:
                reading = from_jsonable(CollectReply, result.value.result)
            except FactsDecodeError as exc:
                facts[name] = Unavailable(f"the reply from {name} does not match this clusterkit's wire: {exc}")
                offsets[name] = Unavailable("unreadable reply")
                continue
            readings[name] = reading
            facts[name] = reading.facts
            offsets[name] = clock_offset(result.value.clock_offset_s)
        else:
            note_unanswered(name, result.error, result.fix, facts, offsets, fixes)
    if options.probes:
        master = _master_probe(names, runnable, addresses, port, master_error, readings)
        from clusterkit.nodecheck.installed import read_health_check

        slurm.health_check = read_health_check(alloc, runnable, min(30.0, step_timeout))
    return {n: facts[n] for n in names}, ClusterProbes(
        head=place.name, clock_offset_s={n: offsets[n] for n in names}, ssh_mesh={}, master=master,
        unreachable_fixes=fixes, mesh_mode="static", head_in_hostfile=place.in_hostfile,
        launch_facts=launch.get("facts", Unavailable(f"this machine's facts took longer than {options.timeout_s:g}s")),
        transport="slurm", slurm=slurm)


def _master_probe(names: list[str], runnable: list[str], addresses: list[str], port: int, error: str,
                  readings: dict[str, CollectReply]) -> Maybe[MasterProbe]:
    if not runnable:
        return Unavailable("no node runs tasks")
    first = runnable[0]
    if not addresses:
        return Unavailable(error or "no master address")
    if first not in readings:
        return Unavailable(f"first host {first} gave no facts")
    listen = readings[first].listen
    port_free: Maybe[bool] = listen.free if listen is not None else Unavailable(
        "the first host's listener gave no answer")
    not_tested = Unavailable("not tested")
    return MasterProbe(host=first, address=addresses[0], all_addresses=addresses, port=port, port_free=port_free,
                       reachable_from={h: r.connect or not_tested for h, r in readings.items()})


def default_agent_dir() -> str | None:
    """``CLUSTERKIT_AGENT_DIR``: a directory every node sees, where the agent is unpacked once (no sbcast)."""
    return os.environ.get("CLUSTERKIT_AGENT_DIR") or None
