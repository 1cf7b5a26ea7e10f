"""Survey a cluster from the head: every node's facts and the cross-node probes, in one pass.

Each node gets one SSH connection and one agent run, which collects the node's facts and, in
threads beside them, logs into other nodes over SSH, connects to the master port on the first host
(which holds that port open meanwhile), and reads its known_hosts for every peer. The probes answer
what no single node can: clock skew against the head, whether the rendezvous address DeepSpeed
would pick (first word of ``hostname -I`` on the first host) is reachable on the master port from
every node, and whether every node can log into every node.

Logins are always judged for every ordered pair from files (user keys, authorized_keys, known_hosts
and host keys, see :mod:`clusterkit.collect.sshtrust`), which costs nothing per pair. Live logins are
opt-in: ``mesh="ring"`` (each node logs into the next, and the head into itself) or ``mesh="full"``
(every pair: N x N SSH handshakes, fine for a handful of nodes, heavy at a hundred, and bursts of
logins trip sshd's MaxStartups). Every node's sshd is already logged into by the head for the survey.
"""

from __future__ import annotations

import os
import shlex
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Console

from clusterkit.facts import (
    ClusterProbes,
    CollectReply,
    ConnectProbe,
    MasterProbe,
    Maybe,
    NodeFacts,
    SshLoginProbe,
    Unavailable,
)
from clusterkit.facts_codec import FactsDecodeError, from_jsonable
from clusterkit.inventory import ActiveHost
from clusterkit.launchsite import LaunchPlace, launch_place
from clusterkit.progress import NodeProgress
from clusterkit.remote import RemoteError, SshSettings, connect, fan_out, known_host_name, run_agent_reply

if TYPE_CHECKING:
    from fabric import Connection

    from clusterkit.cluster import Nodes, ProgressListener
    from clusterkit.remote.slurm import Allocation

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
#: The same script, for the Slurm transport's first-node step.
PICK_PORT_SCRIPT = _PICK_PORT


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


@dataclass
class _Reading:
    reply: CollectReply
    clock_offset_s: float | None


class _Master:
    """The first host's `hostname -I`, shared with the other nodes' tasks once it is known."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.addresses: list[str] = []
        self.port = DEFAULT_MASTER_PORT
        self.error = ""

    @property
    def address(self) -> str | None:
        return self.addresses[0] if self.addresses else None


def _read_node(host: str, names: list[str], settings: SshSettings, options: SurveyOptions, master: _Master,
               place: LaunchPlace, progress: NodeProgress) -> _Reading:
    first = host == names[0]
    try:
        with connect(host, settings) as conn:
            progress.update(host, "collecting")
            args = options.collect_args()
            if options.probes:
                if first:
                    _read_master(conn, host, options, master)
                    if master.addresses:
                        args += ["--listen-port", str(master.port), "--listen-expect", str(len(names)),
                                 "--listen-seconds", f"{min(options.timeout_s, 15.0):g}"]
                args += ["--peers", ",".join(known_host_name(n, settings.port) for n in names)]
                peer = conn.transport.getpeername() if conn.transport is not None else None
                if peer:
                    args += ["--sshd-address", f"{peer[0]}:{peer[1]}"]
                targets = login_targets(names, host, options.mesh, head=place.entry)
                if targets:
                    args += ["--ssh-check", ",".join(targets), "--ssh-timeout", "5"]
                    if settings.port:
                        args += ["--ssh-port", str(settings.port)]
                if master.ready.wait(settings.connect_timeout_s + 10) and master.address:
                    args += ["--connect", f"{master.address}:{master.port}",
                             "--connect-timeout", f"{max(2.0, min(options.timeout_s, 15.0) - 3):g}"]
            reply = run_agent_reply(conn, args, timeout_s=options.timeout_s, python=options.python)
    finally:
        if first:
            master.ready.set()  # never leave the others waiting on a host that failed
    try:
        return _Reading(from_jsonable(CollectReply, reply.result), reply.clock_offset_s)
    except FactsDecodeError as exc:
        raise RemoteError(f"the reply from {host} does not match this clusterkit's wire: {exc}") from None


def _read_master(conn: Connection, host: str, options: SurveyOptions, master: _Master) -> None:
    """The first host's addresses (and, for AUTO_PORT, a port free there); wakes the other nodes."""
    command = "hostname -I"
    if options.master_port == AUTO_PORT:
        pick = shlex.quote(_PICK_PORT)
        command += f"; {{ {shlex.quote(options.python)} -c {pick} || python3 -c {pick}; }} 2>/dev/null"
    out = conn.run(command, hide=True, warn=True, timeout=10)
    lines = out.stdout.splitlines()
    master.addresses = lines[0].split() if lines else []
    if options.master_addr:
        master.addresses = [options.master_addr] + [a for a in master.addresses if a != options.master_addr]
    master.error = "" if master.addresses else f"`hostname -I` on {host} printed no address"
    if options.master_port != AUTO_PORT:
        master.port = options.master_port
    elif len(lines) > 1 and lines[1].strip().isdigit():
        master.port = int(lines[1])
    elif master.addresses:
        master.addresses, master.error = [], f"no free port found on {host} (no Python 3 there?)"
    master.ready.set()


def _master_probe(names: list[str], master: _Master, readings: dict[str, _Reading],
                  options: SurveyOptions) -> Maybe[MasterProbe]:
    first = readings.get(names[0])
    if first is None:
        return Unavailable(f"first host {names[0]} is unreachable")
    if master.address is None:
        return Unavailable(master.error or "no master address")
    listen = first.reply.listen
    port_free: Maybe[bool] = listen.free if listen is not None else Unavailable(
        "the first host's listener gave no answer")
    not_tested = Unavailable("not tested")
    return MasterProbe(host=names[0], address=master.address, all_addresses=master.addresses,
                       port=master.port, port_free=port_free,
                       reachable_from={h: r.reply.connect or not_tested for h, r in readings.items()})


def collect_here(options: SurveyOptions, sections: list[str] | None = None) -> Maybe[NodeFacts]:
    """This machine's facts, read in-process: the view DeepSpeed's runner has when launched here."""
    from clusterkit.collect.node import CollectOptions, collect_node

    try:
        return collect_node(CollectOptions(python=options.python, cwd=options.cwd, sections=sections,
                                           section_timeout_s=options.timeout_s, use_probe_cache=not options.fresh,
                                           script=options.script))
    except Exception as exc:  # collectors never raise; this guards the facts' own assembly
        return Unavailable(f"could not read this machine's facts: {type(exc).__name__}: {exc}")


#: What the launching machine needs judged (pdsh, .deepspeed_env, its NCCL_* variables, the interpreter).
LAUNCH_SECTIONS = ["launcher", "python_env"]


def survey_cluster(hosts: Sequence[ActiveHost], settings: SshSettings, options: SurveyOptions,
                   console: Console | None = None, slurm: Allocation | None = None
                   ) -> tuple[dict[str, Maybe[NodeFacts]], ClusterProbes]:
    """Every node's facts and probes in parallel; a dead or frozen node costs one timeout, nothing more.

    A single active host that is this machine is read in-process, with no SSH: DeepSpeed launches it
    the same way. The launching machine (this one) is always read in-process too, beside the nodes.
    With ``slurm`` (the allocation holding ``hosts``) the nodes are reached through srun instead of SSH
    (:mod:`clusterkit.survey_slurm`).
    """
    if slurm is not None:
        from clusterkit.survey_slurm import default_agent_dir, survey_over_slurm

        return survey_over_slurm(hosts, slurm, options, console, default_agent_dir())
    console = console or Console(stderr=True)
    names = [h.name for h in hosts]
    place = launch_place(names)
    if place.local_only:
        return _survey_here(names[0], options, console)
    master = _Master()
    launch: dict[str, Maybe[NodeFacts]] = {}
    here = threading.Thread(target=lambda: launch.setdefault("facts", collect_here(options, LAUNCH_SECTIONS)),
                            name="collect:launching-machine", daemon=True)
    here.start()
    with NodeProgress(names, "surveying" if options.probes else "collecting facts", console) as progress:
        results = fan_out(names, lambda h: _read_node(h, names, settings, options, master, place, progress),
                          options.timeout_s + settings.connect_timeout_s + 15, progress, settings)
    here.join(options.timeout_s)
    facts: dict[str, Maybe[NodeFacts]] = {}
    offsets: dict[str, Maybe[float]] = {}
    fixes: dict[str, str] = {}
    readings: dict[str, _Reading] = {}
    for name, result in results.items():
        if result.ok and result.value is not None:
            readings[name] = result.value
            facts[name] = result.value.reply.facts
            offsets[name] = clock_offset(result.value.clock_offset_s)
        else:
            note_unanswered(name, result.error, result.fix, facts, offsets, fixes)
    mesh: dict[str, Maybe[list[SshLoginProbe]]] = {}
    master_probe: Maybe[MasterProbe] = Unavailable("probes skipped")
    if options.probes:
        mesh = {name: r.reply.ssh for name, r in readings.items() if r.reply.ssh is not None}
        master_probe = _master_probe(names, master, readings, options)
    return facts, ClusterProbes(head=place.name, clock_offset_s=offsets, ssh_mesh=mesh, master=master_probe,
                                unreachable_fixes=fixes, mesh_mode=options.mesh, head_in_hostfile=place.in_hostfile,
                                launch_facts=launch.get("facts", Unavailable(
                                    f"this machine's facts took longer than {options.timeout_s:g}s")))


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


def _survey_here(name: str, options: SurveyOptions, console: Console
                 ) -> tuple[dict[str, Maybe[NodeFacts]], ClusterProbes]:
    """A one-host run on this machine: its facts in-process, and a free local rendezvous port."""
    with console.status(f"Collecting facts on this machine ({name})…", spinner="dots"):
        facts = collect_here(options)
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


def survey_nodes(nodes: Nodes, options: SurveyOptions, progress: ProgressListener | None = None
                 ) -> tuple[dict[str, Maybe[NodeFacts]], ClusterProbes]:
    """Every node's facts and the cross-node probes, through whatever transport ``nodes`` has.

    Interim: this delegates to the transport-specific surveys until the survey is written once against
    ``Nodes`` (issue 20); its signature is the one callers keep.
    """
    del progress
    alloc = getattr(nodes, "alloc", None)
    if alloc is not None:
        return survey_cluster(nodes.hosts, SshSettings(), options, slurm=alloc)
    return survey_cluster(nodes.hosts, nodes.ssh_mesh() or SshSettings(), options)
