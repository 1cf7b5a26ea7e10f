"""Survey a cluster from the head: every node's facts and the cross-node probes, in one pass, through
whatever transport the :class:`~clusterkit.cluster.Nodes` has.

1. The scheduler's view, where there is one (Slurm's job, node states and reasons): nodes it will run
   nothing on get no task and are reported with its reason.
2. The first node's ``hostname -I`` (the address DeepSpeed picks) and, for an automatic port, a free one.
3. One agent run per node: its facts and, in threads beside them, a listener on the master port (first
   node) and a connection to it (every node), and where the nodes log into each other over SSH
   (:meth:`Nodes.ssh_mesh`), the known_hosts entries of every peer and any live logins.
4. The launching machine (this one), read in-process beside them: the launcher's own view.

The probes answer what no single node can: clock skew against the head, whether the rendezvous
address is reachable on the master port from every node, and whether every node can log into every
node. Logins are always judged for every ordered pair from files (user keys, authorized_keys,
known_hosts and host keys, see :mod:`clusterkit.node.collect.sshtrust`), which costs nothing per pair. Live
logins are opt-in: ``mesh="ring"`` (each node logs into the next, and the head into itself) or
``mesh="full"`` (every pair: N x N SSH handshakes, fine for a handful of nodes, heavy at a hundred, and
bursts of logins trip sshd's MaxStartups). Ranks started by srun or on this machine need no SSH
between nodes, so there is no mesh to probe there.
"""

from __future__ import annotations

import os
import shlex
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clusterkit.cluster.remote.ssh import known_host_name
from clusterkit.core.facts_codec import FactsDecodeError, from_jsonable
from clusterkit.core.launchsite import LaunchPlace, launch_place
from clusterkit.node.facts import (
    ClusterProbes,
    CollectReply,
    ConnectProbe,
    MasterProbe,
    Maybe,
    NodeFacts,
    SlurmFacts,
    SshLoginProbe,
    Unavailable,
)

if TYPE_CHECKING:
    from clusterkit.cluster import CommandOutput, Nodes, ProgressListener
    from clusterkit.cluster.remote.agent import AgentReply
    from clusterkit.cluster.remote.fanout import HostResult

DEFAULT_MASTER_PORT = 29500  # DeepSpeed's default (TORCH_DISTRIBUTED_DEFAULT_PORT)
#: ``SurveyOptions.master_port`` value meaning: DeepSpeed's default if free on the first host, else any free port.
AUTO_PORT = 0
MESH_MODES = ("static", "ring", "full")
# Printed on the first host after `hostname -I` when the port is AUTO_PORT. Runs with any Python 3.
# SO_REUSEADDR as torch's TCPStore sets it: a port left in TIME_WAIT by the last job is still free.
_PICK_PORT = ("import socket\n"
              f"for port in ({DEFAULT_MASTER_PORT}, 0):\n"
              "    s = socket.socket()\n"
              "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
              "    try:\n"
              "        s.bind(('', port)); print(s.getsockname()[1]); break\n"
              "    except OSError: pass\n"
              "    finally: s.close()\n")
#: Seconds beyond the agent's own deadline a node's reply may take (starting it, shipping it first).
AGENT_SLACK_S = 10.0
#: Seconds the first node may take to print its addresses (and pick a port).
MASTER_STEP_TIMEOUT_S = 30.0
#: Seconds the scheduler's commands may take (``scontrol``, ``sinfo``).
SCHEDULER_TIMEOUT_S = 20.0


@dataclass
class SurveyOptions:
    """What to inspect and how long each node may take."""

    python: str = field(default_factory=lambda: sys.executable)
    cwd: str = field(default_factory=os.getcwd)
    timeout_s: float = 30.0
    #: Rendezvous port to probe; AUTO_PORT lets the first host pick one (see ``ClusterProbes.master``).
    master_port: int = DEFAULT_MASTER_PORT
    #: Rendezvous address to probe instead of the first word of the first host's ``hostname -I``.
    master_addr: str | None = None
    #: Cross-node probes (SSH logins, master port, known_hosts of peers); off for bootstrap's facts.
    probes: bool = True
    mesh: str = "static"
    #: Re-probe every Python env even where the cached probe is still valid.
    fresh: bool = False
    #: The training script a launch will run (relative to ``cwd``): whether each node has it is read too.
    script: str | None = None

    def collect_args(self) -> list[str]:
        """The agent's ``collect`` arguments for these options, before any probe of its own."""
        return (["collect", "--python", self.python, "--cwd", self.cwd,
                 "--timeout", f"{max(5.0, self.timeout_s - 5.0):g}"] + (["--fresh"] if self.fresh else [])
                + (["--script", self.script] if self.script else []))


def login_targets(names: list[str], host: str, mesh: str, head: str | None = None) -> list[str]:
    """Whom ``host`` logs into live: everyone (full), nobody (static), or for a ring its successor in
    the hostfile, plus itself on the head (pdsh logs into the launching node too)."""
    if mesh == "full":
        return list(names)
    if mesh == "ring":
        following = names[(names.index(host) + 1) % len(names)]
        return list(dict.fromkeys([host, following] if host == head else [following]))
    return []


def collect_here(options: SurveyOptions, sections: list[str] | None = None) -> Maybe[NodeFacts]:
    """This machine's facts, read in-process: the view DeepSpeed's runner has when launched here."""
    from clusterkit.node.collect.node import CollectOptions, collect_node

    try:
        return collect_node(CollectOptions(python=options.python, cwd=options.cwd, sections=sections,
                                           section_timeout_s=options.timeout_s, use_probe_cache=not options.fresh,
                                           script=options.script))
    except Exception as exc:  # collectors never raise; this guards the facts' own assembly
        return Unavailable(f"could not read this machine's facts: {type(exc).__name__}: {exc}")


#: What the launching machine needs judged (pdsh, .deepspeed_env, its NCCL_* variables, the interpreter).
LAUNCH_SECTIONS = ["launcher", "python_env"]


def clock_offset(offset: float | None) -> Maybe[float]:
    """A node's clock offset as its reply gave it (an agent that sent no clock leaves it unknown)."""
    return offset if offset is not None else Unavailable("the agent sent no clock")


def note_unanswered(name: str, error: str | None, fix: str | None, facts: dict[str, Maybe[NodeFacts]],
                    offsets: dict[str, Maybe[float]], fixes: dict[str, str]) -> None:
    """A node that gave no facts: why, in place of its facts and clock, and the fix when the failure has one."""
    facts[name] = Unavailable(error or "no answer")
    offsets[name] = Unavailable("node unreachable")
    if fix:
        fixes[name] = fix


def _tell(progress: ProgressListener | None, hosts: Sequence[str], state: str, detail: str = "") -> None:
    if progress is not None:
        for host in hosts:
            progress.update(host, state, detail)


def _survey_here(name: str, options: SurveyOptions, progress: ProgressListener | None
                 ) -> tuple[dict[str, Maybe[NodeFacts]], ClusterProbes]:
    """A one-host run on this machine: its facts in-process, and a free local rendezvous port."""
    _tell(progress, [name], "collecting")
    facts = collect_here(options)
    _tell(progress, [name], "failed" if isinstance(facts, Unavailable) else "ok",
          facts.reason if isinstance(facts, Unavailable) else "")
    master: Maybe[MasterProbe] = Unavailable("probes skipped")
    if options.probes:
        port = options.master_port if options.master_port != AUTO_PORT else _free_local_port()
        address = options.master_addr or "127.0.0.1"
        master = MasterProbe(host=name, address=address, all_addresses=[address], port=port,
                             port_free=_port_free(port), reachable_from={name: ConnectProbe(True)})
    return {name: facts}, ClusterProbes(head=name, clock_offset_s={name: 0.0}, ssh_mesh={}, master=master,
                                        mesh_mode=options.mesh, head_in_hostfile=True, local_only=True,
                                        launch_facts=facts)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        # As torch's TCPStore binds it: a port left in TIME_WAIT by the last job is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _free_local_port() -> int:
    """DeepSpeed's default port when it is free here, else one the kernel hands out."""
    if _port_free(DEFAULT_MASTER_PORT):
        return DEFAULT_MASTER_PORT
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Master:
    """The first node's addresses and the port to probe there, or why there are none."""

    addresses: list[str] = field(default_factory=list)
    port: int = DEFAULT_MASTER_PORT
    error: str = ""
    #: The first node gave no answer at all (refused, timed out): it is not asked again for its facts.
    silent: HostResult[CommandOutput] | None = None


def master_command(options: SurveyOptions) -> str:
    """What the first node runs: ``hostname -I``, and for AUTO_PORT a port free there on a second line."""
    command = "hostname -I"
    if options.master_port == AUTO_PORT:
        pick = shlex.quote(_PICK_PORT)
        command += f"; {{ {shlex.quote(options.python)} -c {pick} || python3 -c {pick}; }} 2>/dev/null"
    return command


def _read_master(nodes: Nodes, first: str, options: SurveyOptions) -> _Master:
    timeout_s = min(MASTER_STEP_TIMEOUT_S, options.timeout_s + AGENT_SLACK_S)
    result = nodes.run(master_command(options), timeout_s, hosts=[first])[first]
    if not result.ok or result.value is None:
        return _Master(error=result.error or f"no answer from {first}", silent=result)
    lines = result.value.stdout.splitlines()
    addresses = lines[0].split() if lines else []
    if options.master_addr:
        addresses = [options.master_addr] + [a for a in addresses if a != options.master_addr]
    if not addresses:
        return _Master(error=f"`hostname -I` on {first} printed no address")
    if options.master_port != AUTO_PORT:
        return _Master(addresses, options.master_port)
    if len(lines) > 1 and lines[1].strip().isdigit():
        return _Master(addresses, int(lines[1]))
    return _Master(error=f"no free port found on {first} (no Python 3 there?)")


def _agent_args(nodes: Nodes, names: list[str], runnable: list[str], options: SurveyOptions, master: _Master,
                place: LaunchPlace) -> tuple[list[str], dict[str, list[str]]]:
    """The agent's arguments on every node, and those of some nodes only (the listener, SSH logins)."""
    args = options.collect_args()
    per_host: dict[str, list[str]] = {n: [] for n in runnable}
    if not options.probes or not runnable:
        return args, per_host
    if master.addresses:
        per_host[runnable[0]] += ["--listen-port", str(master.port), "--listen-expect", str(len(runnable)),
                                  "--listen-seconds", f"{min(options.timeout_s, 15.0):g}"]
        args += ["--connect", f"{master.addresses[0]}:{master.port}",
                 "--connect-timeout", f"{max(2.0, min(options.timeout_s, 15.0) - 3):g}"]
    mesh = nodes.ssh_mesh()
    if mesh is not None:
        # "ssh": the agent reads where the head reached its sshd from its session's SSH_CONNECTION.
        args += ["--peers", ",".join(known_host_name(n, mesh.port) for n in names), "--sshd-address", "ssh"]
        for host in runnable:
            targets = login_targets(names, host, options.mesh, head=place.entry)
            if targets:
                per_host[host] += ["--ssh-check", ",".join(targets), "--ssh-timeout", "5"]
                if mesh.port:
                    per_host[host] += ["--ssh-port", str(mesh.port)]
    return args, per_host


def _master_probe(runnable: list[str], master: _Master, readings: Mapping[str, CollectReply]
                  ) -> Maybe[MasterProbe]:
    if not runnable:
        return Unavailable("no node runs tasks")
    first = runnable[0]
    if first not in readings:
        return Unavailable(f"first host {first} is unreachable")
    if not master.addresses:
        return Unavailable(master.error or "no master address")
    listen = readings[first].listen
    port_free: Maybe[bool] = listen.free if listen is not None else Unavailable(
        "the first host's listener gave no answer")
    not_tested = Unavailable("not tested")
    return MasterProbe(host=first, address=master.addresses[0], all_addresses=master.addresses, port=master.port,
                       port_free=port_free, reachable_from={h: r.connect or not_tested for h, r in readings.items()})


def _read_replies(replies: Mapping[str, HostResult[AgentReply]], facts: dict[str, Maybe[NodeFacts]],
                  offsets: dict[str, Maybe[float]], fixes: dict[str, str]) -> dict[str, CollectReply]:
    """Each node's decoded reply; a node without one gets why in place of its facts and clock."""
    readings: dict[str, CollectReply] = {}
    for name, result in replies.items():
        if not result.ok or result.value is None:
            note_unanswered(name, result.error, result.fix, facts, offsets, fixes)
            continue
        try:
            reading = from_jsonable(CollectReply, result.value.result)
        except FactsDecodeError as exc:
            facts[name] = Unavailable(f"the reply from {name} does not match this clusterkit's wire: {exc}")
            offsets[name] = Unavailable("unreadable reply")
            continue
        readings[name] = reading
        facts[name] = reading.facts
        offsets[name] = clock_offset(result.value.clock_offset_s)
    return readings


#: How long asking each node for its health-check script's version may take.
HEALTH_CHECK_TIMEOUT_S = 30.0


def survey_nodes(nodes: Nodes, options: SurveyOptions, progress: ProgressListener | None = None
                 ) -> tuple[dict[str, Maybe[NodeFacts]], ClusterProbes]:
    """Every node's facts and the cross-node probes, through whatever transport ``nodes`` has; a dead or
    frozen node costs one timeout, nothing more.

    With no scheduler, a single host that is this machine is read in-process (DeepSpeed launches it the
    same way). The launching machine (this one) is always read in-process too, beside the nodes.
    """
    names = nodes.names
    place = launch_place(names)
    view = nodes.scheduler_view(SCHEDULER_TIMEOUT_S)
    if view is None and place.local_only:
        return _survey_here(names[0], options, progress)
    launch: dict[str, Maybe[NodeFacts]] = {}
    here = threading.Thread(target=lambda: launch.setdefault("facts", collect_here(options, LAUNCH_SECTIONS)),
                            name="collect:launching-machine", daemon=True)
    here.start()
    unusable = view.unusable if view is not None else {}
    runnable = [n for n in names if n not in unusable]
    facts: dict[str, Maybe[NodeFacts]] = {n: Unavailable(unusable[n]) for n in names if n in unusable}
    offsets: dict[str, Maybe[float]] = {n: Unavailable("no task on this node") for n in facts}
    fixes = {n: view.fixes[n] for n in facts if view is not None and n in view.fixes}
    for node in facts:
        _tell(progress, [node], "failed", unusable[node])
    master = _Master(error="no node to probe")
    asked = list(runnable)
    if options.probes and runnable:
        master = _read_master(nodes, runnable[0], options)
        if master.silent is not None:  # a dead first node costs one timeout, not two
            asked.remove(runnable[0])
            note_unanswered(runnable[0], master.error, master.silent.fix, facts, offsets, fixes)
            _tell(progress, [runnable[0]], "failed", master.error)
    args, per_host = _agent_args(nodes, names, runnable, options, master, place)
    _tell(progress, asked, "collecting")
    replies = nodes.run_agent(args, options.timeout_s + AGENT_SLACK_S, python=options.python,
                              per_host_args={h: per_host[h] for h in asked}, hosts=asked,
                              progress=progress) if asked else {}
    here.join(options.timeout_s)
    readings = _read_replies(replies, facts, offsets, fixes)
    mesh: dict[str, Maybe[list[SshLoginProbe]]] = {}
    master_probe: Maybe[MasterProbe] = Unavailable("probes skipped")
    if options.probes:
        mesh = {name: r.ssh for name, r in readings.items() if r.ssh is not None}
        master_probe = _master_probe(runnable, master, readings)
    slurm = view.facts if view is not None and isinstance(view.facts, SlurmFacts) else Unavailable(
        "not run through Slurm")
    if options.probes and not isinstance(slurm, Unavailable):
        from clusterkit.nodecheck.installed import read_health_check

        slurm.health_check = read_health_check(nodes, runnable, HEALTH_CHECK_TIMEOUT_S)
    return {n: facts[n] for n in names}, ClusterProbes(
        head=place.name, clock_offset_s={n: offsets[n] for n in names}, ssh_mesh=mesh, master=master_probe,
        unreachable_fixes=fixes, mesh_mode=options.mesh if nodes.ssh_mesh() is not None else "static",
        head_in_hostfile=place.in_hostfile, transport=nodes.transport, slurm=slurm,
        launch_facts=launch.get("facts", Unavailable(f"this machine's facts took longer than {options.timeout_s:g}s")))
