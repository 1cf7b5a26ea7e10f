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
    FactsDecodeError,
    MasterProbe,
    Maybe,
    NodeFacts,
    Unavailable,
    from_jsonable,
)
from clusterkit.inventory import ActiveHost
from clusterkit.progress import NodeProgress
from clusterkit.remote import RemoteError, SshSettings, connect, fan_out, known_host_name, run_agent_reply

if TYPE_CHECKING:
    from fabric import Connection

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
    facts: NodeFacts
    clock_offset_s: float | None
    ssh: dict[str, str] | None = None
    listen: dict[str, object] | None = None
    connect: str | None = None


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
               progress: NodeProgress) -> _Reading:
    first = host == names[0]
    try:
        with connect(host, settings) as conn:
            progress.update(host, "collecting")
            args = ["collect", "--python", options.python, "--cwd", options.cwd,
                    "--timeout", f"{max(5.0, options.timeout_s - 5.0):g}"] + (["--fresh"] if options.fresh else [])
            if options.probes:
                if first:
                    _read_master(conn, host, options, master)
                    if master.addresses:
                        args += ["--listen-port", str(master.port), "--listen-expect", str(len(names)),
                                 "--listen-seconds", f"{min(options.timeout_s, 15.0):g}"]
                args += ["--peers", ",".join(known_host_name(n, settings.port) for n in names)]
                targets = login_targets(names, host, options.mesh, head=_local_name(names))
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
    result = reply.result
    try:
        facts = from_jsonable(NodeFacts, result["facts"])
    except (FactsDecodeError, KeyError, TypeError) as exc:
        raise RemoteError(f"facts from {host} do not match this clusterkit version: {exc}") from None
    reading = _Reading(facts, reply.clock_offset_s)
    if isinstance(result.get("ssh"), list):
        reading.ssh = {row["host"]: "" if row.get("ok") else (row.get("error") or f"exit {row.get('rc')}")
                       for row in result["ssh"]}
    if isinstance(result.get("listen"), dict):
        reading.listen = result["listen"]
    if isinstance(result.get("connect"), dict):
        reading.connect = "" if result["connect"].get("ok") else str(result["connect"].get("error"))
    return reading


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


def _local_name(names: list[str]) -> str | None:
    """The hostfile name of this machine, if it is in the hostfile (by name, before any facts)."""
    import socket

    me = {socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1"}
    return next((n for n in names if n in me), None)


def head_name(hosts: Sequence[ActiveHost], facts: dict[str, Maybe[NodeFacts]]) -> str:
    """The hostfile entry that is this machine (where clusterkit and the launcher run), if any."""
    import socket

    me = socket.gethostname()
    for host in hosts:
        node = facts.get(host.name)
        if host.name in ("localhost", "127.0.0.1", me) or (
                not isinstance(node, Unavailable) and node is not None and node.host.hostname == me):
            return host.name
    return me


def _master_probe(names: list[str], master: _Master, readings: dict[str, _Reading],
                  options: SurveyOptions) -> Maybe[MasterProbe]:
    first = readings.get(names[0])
    if first is None:
        return Unavailable(f"first host {names[0]} is unreachable")
    if master.address is None:
        return Unavailable(master.error or "no master address")
    port_free: Maybe[bool] = Unavailable("the first host's listener gave no answer")
    if first.listen is not None:
        port_free = bool(first.listen.get("free"))
    return MasterProbe(host=names[0], address=master.address, all_addresses=master.addresses,
                       port=master.port, port_free=port_free,
                       reachable_from={h: r.connect if r.connect is not None else "not tested"
                                       for h, r in readings.items()})


def survey_cluster(hosts: Sequence[ActiveHost], settings: SshSettings, options: SurveyOptions,
                   console: Console | None = None) -> tuple[dict[str, Maybe[NodeFacts]], ClusterProbes]:
    """Every node's facts and probes in parallel; a dead or frozen node costs one timeout, nothing more."""
    console = console or Console(stderr=True)
    names = [h.name for h in hosts]
    master = _Master()
    with NodeProgress(names, "surveying" if options.probes else "collecting facts", console) as progress:
        results = fan_out(names, lambda h: _read_node(h, names, settings, options, master, progress),
                          options.timeout_s + settings.connect_timeout_s + 15, progress, settings)
    facts: dict[str, Maybe[NodeFacts]] = {}
    offsets: dict[str, Maybe[float]] = {}
    fixes: dict[str, str] = {}
    readings: dict[str, _Reading] = {}
    for name, result in results.items():
        if result.ok and result.value is not None:
            readings[name] = result.value
            facts[name] = result.value.facts
            offset = result.value.clock_offset_s
            offsets[name] = offset if offset is not None else Unavailable("the agent sent no clock")
        else:
            facts[name] = Unavailable(result.error or "no answer")
            offsets[name] = Unavailable("node unreachable")
            if result.fix:
                fixes[name] = result.fix
    mesh: dict[str, Maybe[dict[str, str]]] = {}
    master_probe: Maybe[MasterProbe] = Unavailable("probes skipped")
    if options.probes:
        mesh = {name: r.ssh for name, r in readings.items() if r.ssh is not None}
        master_probe = _master_probe(names, master, readings, options)
    return facts, ClusterProbes(head=head_name(hosts, facts), clock_offset_s=offsets, ssh_mesh=mesh,
                                master=master_probe, unreachable_fixes=fixes, mesh_mode=options.mesh)
