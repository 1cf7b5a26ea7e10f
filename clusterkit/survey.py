"""Survey a cluster from the head: every node's facts via the agent, then cross-node probes.

The probes answer what no single node can: clock skew against the head, passwordless SSH from
every node to every node (by hostname, as in the hostfile), and whether the rendezvous address
DeepSpeed would pick (first word of ``hostname -I`` on the first host) is reachable on the master
port from every node. All of it goes through :func:`clusterkit.remote.fan_out`, so a dead or frozen
node costs at most one timeout and never hides the others.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

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
from clusterkit.remote import RemoteError, SshSettings, connect, fan_out, run_agent

DEFAULT_MASTER_PORT = 29500  # DeepSpeed's default (TORCH_DISTRIBUTED_DEFAULT_PORT)


@dataclass
class SurveyOptions:
    """What to inspect and how long each node may take."""

    python: str = field(default_factory=lambda: sys.executable)
    cwd: str = field(default_factory=os.getcwd)
    timeout_s: float = 30.0
    master_port: int = DEFAULT_MASTER_PORT
    probes: bool = True


@dataclass
class _NodeReading:
    facts: NodeFacts
    clock_offset_s: float
    addresses: list[str]


def _read_node(host: str, first: bool, settings: SshSettings, options: SurveyOptions,
               progress: NodeProgress) -> _NodeReading:
    with connect(host, settings) as conn:
        progress.update(host, "collecting")
        inner = max(5.0, options.timeout_s - 5.0)
        raw = run_agent(conn, ["collect", "--python", options.python, "--cwd", options.cwd,
                               "--timeout", f"{inner:g}"], timeout_s=options.timeout_s, python=options.python)
        try:
            facts = from_jsonable(NodeFacts, raw)
        except FactsDecodeError as exc:
            raise RemoteError(f"facts from {host} do not match this clusterkit version: {exc}") from None
        sent = time.time()
        clock = conn.run("date +%s.%N", hide=True, warn=True, timeout=10)
        received = time.time()
        try:
            offset = float(clock.stdout.strip()) - (sent + received) / 2
        except ValueError:
            offset = float("nan")
        addresses: list[str] = []
        if first:
            out = conn.run("hostname -I", hide=True, warn=True, timeout=10)
            addresses = out.stdout.split() if out.exited == 0 else []
        return _NodeReading(facts, offset, addresses)


def _ssh_mesh(names: list[str], reachable: list[str], settings: SshSettings, options: SurveyOptions,
              console: Console) -> dict[str, Maybe[dict[str, str]]]:
    def probe(host: str) -> dict[str, str]:
        with connect(host, settings) as conn:
            args = ["ssh-mesh", "--hosts", ",".join(names), "--timeout", "5"]
            if settings.port:
                args += ["--port", str(settings.port)]
            rows = run_agent(conn, args, timeout_s=options.timeout_s)
            return {row["host"]: "" if row["ok"] else (row.get("error") or f"exit {row.get('rc')}")
                    for row in rows}

    with NodeProgress(reachable, "ssh all-to-all", console) as progress:
        results = fan_out(reachable, probe, options.timeout_s, progress, settings)
    return {h: r.value if r.ok and r.value is not None else Unavailable(r.error or "no result")
            for h, r in results.items()}


def _master_probe(first: str, addresses: list[str], reachable: list[str], settings: SshSettings,
                  options: SurveyOptions, console: Console) -> Maybe[MasterProbe]:
    if not addresses:
        return Unavailable(f"`hostname -I` on {first} printed no address")
    address = addresses[0]
    listen_for = min(options.timeout_s, 15.0)
    listener: dict[str, object] = {}

    def listen() -> None:
        try:
            with connect(first, settings) as conn:
                listener["result"] = run_agent(
                    conn, ["listen", "--port", str(options.master_port), "--seconds", f"{listen_for:g}",
                           "--expect", str(len(reachable))], timeout_s=listen_for + 10)
        except Exception as exc:  # reported as the probe's outcome
            listener["error"] = str(exc)

    thread = threading.Thread(target=listen, name="master-listen", daemon=True)
    thread.start()

    def reach(host: str) -> str:
        with connect(host, settings) as conn:
            row = run_agent(conn, ["connect", "--host", address, "--port", str(options.master_port),
                                   "--timeout", f"{max(2.0, listen_for - 3):g}"], timeout_s=listen_for)
            return "" if row["ok"] else str(row["error"])

    with NodeProgress(reachable, f"master {address}:{options.master_port} reachable", console) as progress:
        results = fan_out(reachable, reach, listen_for + 5, progress, settings)
    thread.join(listen_for + 10)
    port_free: Maybe[bool]
    result = listener.get("result")
    if isinstance(result, dict):
        port_free = bool(result.get("free"))
    else:
        port_free = Unavailable(str(listener.get("error", "listener gave no answer")))
    return MasterProbe(host=first, address=address, all_addresses=addresses, port=options.master_port,
                       port_free=port_free,
                       reachable_from={h: ("" if r.ok and r.value == "" else (r.value or r.error or "?"))
                                       for h, r in results.items()})


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


def survey_cluster(hosts: Sequence[ActiveHost], settings: SshSettings, options: SurveyOptions,
                   console: Console | None = None) -> tuple[dict[str, Maybe[NodeFacts]], ClusterProbes]:
    """Collect every node's facts in parallel, then run the cross-node probes on the reachable ones."""
    console = console or Console(stderr=True)
    names = [h.name for h in hosts]
    with NodeProgress(names, "collecting facts", console) as progress:
        readings = fan_out(
            names, lambda h: _read_node(h, h == names[0], settings, options, progress),
            options.timeout_s + 10, progress, settings)
    facts: dict[str, Maybe[NodeFacts]] = {}
    offsets: dict[str, Maybe[float]] = {}
    fixes: dict[str, str] = {}
    for name, result in readings.items():
        if result.ok and result.value is not None:
            facts[name] = result.value.facts
            offsets[name] = result.value.clock_offset_s
        else:
            facts[name] = Unavailable(result.error or "no answer")
            offsets[name] = Unavailable("node unreachable")
            if result.fix:
                fixes[name] = result.fix
    reachable = [n for n in names if not isinstance(facts[n], Unavailable)]
    head = head_name(hosts, facts)
    mesh: dict[str, Maybe[dict[str, str]]] = {}
    master: Maybe[MasterProbe] = Unavailable("probes skipped")
    if options.probes and reachable:
        mesh = _ssh_mesh(names, reachable, settings, options, console)
        first = readings[names[0]]
        if first.ok and first.value is not None:
            master = _master_probe(names[0], first.value.addresses, reachable, settings, options, console)
        else:
            master = Unavailable(f"first host {names[0]} is unreachable: {first.error}")
    return facts, ClusterProbes(head=head, clock_offset_s=offsets, ssh_mesh=mesh, master=master,
                                unreachable_fixes=fixes)
