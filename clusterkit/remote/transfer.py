"""Streamed uploads and a pipelined node-to-node relay over SSH. Generic: it moves a file, nothing more.

``broadcast(source, RemoteFile(path, size, sha256), hosts, ...)`` puts a verified copy of a local file
at the same path on every host, in rounds:

1. every host is probed (one SSH command each, in parallel): its copy is complete (re-hashed in the
   first round, so a copy damaged since is caught), partial (kept for a resume), wrong or missing, and
   how much space its directory has; unreachable hosts and hosts without the space are reported;
2. the hosts that need the file form a chain, head -> h1 -> h2 -> ..., each hop writing to its disk
   while forwarding (``relay_hop.py``), so the whole chain takes about one transfer over one link
   whatever its length; the stream starts at the smallest partial copy and every hop hashes on the fly.
   The probe has already opened each host's SSH connection to the next one (all at once, as control
   masters), and the head sends its first byte when the last hop is ready: setting up the chain costs
   about one round trip per hop, not one SSH handshake per hop behind links already full of data;
3. hosts left without a good copy (a hop died and cut off the rest, a checksum mismatch) go into the
   next round's chain, which resumes their partial copies: a dead node is routed around.

The head's side streams from the file through one paramiko channel (never the whole file in memory);
nodes reach the next node with the ``ssh`` client and the keys bootstrap installed, host keys checked.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import shlex
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clusterkit.remote import HostResult, RemoteError, SshSettings, connect, explain, fan_out
from clusterkit.remote.cancel import CancelScope, IdleWatchdog, running_in
from clusterkit.remote.openssh import ssh_argv
from clusterkit.remote.relay_hop import human as human_bytes

HOP_SOURCE = Path(__file__).with_name("relay_hop.py")
MARKER = "@@ckrelay "
CHUNK = 1 << 20
_BOOT = ("import base64,sys,zlib;exec(compile(zlib.decompress(base64.b64decode(sys.argv[1])),"
         "'clusterkit-relay-hop','exec'))")


@dataclass(frozen=True)
class RemoteFile:
    """What every copy must be: the same absolute path on each host, this size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class CopyState:
    """One host's copy as a probe found it."""

    state: str  #: complete, partial, wrong or missing
    bytes_present: int
    free_bytes: int | None
    writable: bool
    error: str | None = None


@dataclass(frozen=True)
class HopEvent:
    """What a hop reported: ``start``, ``ready`` (it and the hops behind it), ``progress``, ``done``, ``failed``,
    or ``lost`` (its successor)."""

    host: str
    kind: str
    position: int | None
    error: str | None
    at: float


Listener = Callable[[HopEvent], None]


@dataclass(frozen=True)
class RelayOptions:
    """How hops run: the ssh argv a node uses to reach the next one, its python, the stall limit."""

    hop_ssh: tuple[str, ...]
    python: str = "python3"
    stall_s: float = 30.0
    probe_timeout_s: float = 60.0
    max_rounds: int = 3


@dataclass
class Delivery:
    """One host's outcome of a broadcast."""

    host: str
    ok: bool
    sent_bytes: int = 0
    resumed_from: int = 0
    rounds: int = 0
    error: str | None = None
    fix: str | None = None
    notes: list[str] = field(default_factory=list)


def node_ssh_argv(settings: SshSettings) -> tuple[str, ...]:
    """The ssh client line a node uses to reach the next one: no prompts, host keys checked, dead peers noticed.

    Without ``--identity``: that path is the head's; nodes log in to each other with their own keys.
    """
    argv = ssh_argv(replace(settings, identity_file=None))
    return (*argv[:1], "-o", "StrictHostKeyChecking=yes", "-o", "ServerAliveInterval=3",
            "-o", "ServerAliveCountMax=3",
            # OpenSSH's default ciphers, AES-GCM first: with AES-NI it costs a hop far less CPU than chacha20.
            "-c", "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,"
                  "aes192-ctr,aes256-ctr", *argv[1:])


@functools.cache
def hop_blob() -> str:
    """relay_hop.py as a shell-safe word (zlib + base64) that every hop passes on to the next."""
    return base64.b64encode(zlib.compress(HOP_SOURCE.read_bytes(), 9)).decode("ascii")


def hop_command(python: str, spec: dict[str, Any]) -> str:
    encoded = base64.b64encode(json.dumps(spec).encode()).decode("ascii")
    return f"{python} -I -S -c {shlex.quote(_BOOT)} {hop_blob()} {encoded}"


# ------------------------------------------------------------------------------------------- probe


def probe_copy(conn: Any, remote: RemoteFile, *, rehash: bool, python: str = "python3",
               timeout_s: float = 60.0, warm: tuple[str, tuple[str, ...], float] | None = None) -> CopyState:
    """The state of ``remote`` on the host behind ``conn`` (an open Fabric connection).

    ``warm``: (next host, the hop ssh argv, seconds): where this host will relay, it opens its SSH link to
    the next host now, as a control master its hop will use.
    """
    spec: dict[str, Any] = {"op": "probe", "path": remote.path, "size": remote.size, "sha256": remote.sha256,
                            "rehash": rehash}
    if warm is not None:
        spec.update(warm=warm[0], ssh=list(warm[1]), warm_timeout_s=warm[2])
    result = conn.run(hop_command(python, spec), hide=True, warn=True, timeout=timeout_s)
    if result.exited == 127:
        raise RemoteError(f"{conn.host} has no {python} on the non-interactive PATH",
                          fix=f"install python3 on {conn.host} (only the standard library is needed)")
    lines = [line for line in str(result.stdout).splitlines() if line.startswith("{")]
    if result.exited != 0 or not lines:
        tail = " | ".join((str(result.stderr).strip() or str(result.stdout).strip()).splitlines()[-2:])
        raise RemoteError(f"probing {remote.path} on {conn.host} failed: {tail or 'no output'}")
    data = json.loads(lines[-1])
    return CopyState(state=str(data["state"]), bytes_present=int(data["bytes"]),
                     free_bytes=None if data["free"] is None else int(data["free"]),
                     writable=bool(data["writable"]), error=data.get("error"))


# ------------------------------------------------------------------------------------------- relay


def relay(source: Path, remote: RemoteFile, chain: Sequence[str], settings: SshSettings, options: RelayOptions,
          listener: Listener | None = None, offset: int = 0) -> dict[str, HostResult[int]]:
    """Stream ``source`` from byte ``offset`` along ``chain``; per host: bytes it holds now, or why not.

    A host that reported nothing (cut off behind a lost hop) gets an error saying so.
    """
    finals: dict[str, HostResult[int]] = {}
    last_event = [time.monotonic()]
    lock = threading.Lock()
    first = chain[0]
    chain_ready = threading.Event()
    # Past the stall limits below: the first hop vanished while a socket write was blocked.
    watchdog = IdleWatchdog(CancelScope(), 2 * options.stall_s + 15)

    def handle(event: HopEvent) -> None:
        last_event[0] = event.at
        watchdog.alive()
        if event.kind == "ready" and event.host == first:
            chain_ready.set()
        with lock:
            if event.kind == "done":
                finals.setdefault(event.host, HostResult(event.host, value=remote.size))
            elif event.kind in ("failed", "lost"):
                finals.setdefault(event.host, HostResult(event.host, error=event.error or event.kind))
        if listener is not None:
            listener(event)

    spec = {"op": "hop", "label": chain[0], "path": remote.path, "size": remote.size, "sha256": remote.sha256,
            "offset": offset, "next": list(chain[1:]), "ssh": list(options.hop_ssh), "stall_s": options.stall_s,
            "python": options.python, "mux": True}
    stderr_tail: list[str] = []
    try:
        with watchdog, running_in(watchdog.scope), connect(first, settings) as conn:
            channel = conn.client.get_transport().open_session(timeout=settings.connect_timeout_s)
            channel.exec_command(hop_command(options.python, spec))
            readers = [threading.Thread(target=_read_events, args=(channel, handle, chain_ready.set),
                                        daemon=True),
                       threading.Thread(target=_read_stderr, args=(channel, stderr_tail), daemon=True)]
            for reader in readers:
                reader.start()
            chain_ready.wait(options.stall_s)  # past that, send anyway: the stall limits end a chain that hangs
            channel.settimeout(options.stall_s)
            with open(source, "rb") as stream:
                stream.seek(offset)
                while block := stream.read(CHUNK):
                    channel.sendall(block)
                    watchdog.alive()
            channel.shutdown_write()
            while not channel.exit_status_ready():
                if all(host in finals for host in chain):
                    break  # every copy is settled: what the hops have left to do is exit
                if time.monotonic() - last_event[0] > 2 * options.stall_s + 10:
                    break
                time.sleep(0.05)
            status = channel.exit_status if channel.exit_status_ready() else None
            if status is None:
                channel.close()  # the readers then see the end of the stream
            for reader in readers:
                reader.join(timeout=5)
            channel.close()
            if status not in (0, None) and first not in finals:
                why = " | ".join(stderr_tail[-2:]) or f"exit status {status}"
                handle(HopEvent(first, "failed", None, f"the relay on {first} failed: {why}", time.monotonic()))
    except Exception as exc:  # the first hop is lost: the whole chain behind it gets nothing more
        err = (f"{first} stopped answering: nothing moved for {watchdog.limit_s:.0f}s" if watchdog.fired
               else explain(exc, first, settings))
        handle(HopEvent(first, "lost", None, f"lost {first} while sending: {err}", time.monotonic()))
    return {host: finals.get(host) or HostResult(host, error="no result: cut off behind a lost node")
            for host in chain}


def _read_events(channel: Any, handle: Callable[[HopEvent], None], ended: Callable[[], None]) -> None:
    try:
        _read_event_lines(channel, handle)
    finally:
        ended()


def _read_event_lines(channel: Any, handle: Callable[[HopEvent], None]) -> None:
    stream = channel.makefile("rb")
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace")
        if not line.startswith(MARKER):
            continue
        try:
            data = json.loads(line[len(MARKER):])
        except ValueError:
            continue
        position = data.get("pos")
        handle(HopEvent(str(data.get("host")), str(data.get("ev")),
                        int(position) if isinstance(position, int) else None, data.get("error"), time.monotonic()))


def _read_stderr(channel: Any, tail: list[str]) -> None:
    stream = channel.makefile_stderr("rb")
    for raw in iter(stream.readline, b""):
        text = raw.decode("utf-8", "replace").strip()
        if text:
            tail[:] = [*tail, text][-6:]


# --------------------------------------------------------------------------------------- broadcast


def broadcast(source: Path, remote: RemoteFile, hosts: Sequence[str], settings: SshSettings,
              options: RelayOptions, listener: Listener | None = None,
              round_listener: Callable[[int, list[str], int], None] | None = None) -> dict[str, Delivery]:
    """A verified copy of ``source`` at ``remote.path`` on every host that can take one, in rounds."""
    deliveries = {host: Delivery(host, ok=False) for host in hosts}
    pending = list(hosts)
    for round_number in range(1, options.max_rounds + 1):
        # Each host warms its link to the host after it: the chain is these hosts in this order, less
        # those found complete or unable to take the file (whose successors then connect directly).
        successors = dict(itertools.pairwise(pending))
        probe = functools.partial(_probe, remote=remote, settings=settings, options=options,
                                  rehash=round_number == 1, successors=successors)
        states = fan_out(pending, probe, options.probe_timeout_s, settings=settings)
        chain: list[str] = []
        offsets: list[int] = []
        for host in pending:
            delivery, result = deliveries[host], states[host]
            if not result.ok or result.value is None:
                delivery.error, delivery.fix = result.error, result.fix
                continue
            state = result.value
            if state.state == "complete":
                delivery.ok, delivery.error, delivery.fix = True, None, None
                continue
            if state.state == "wrong":
                delivery.notes.append(f"its copy was wrong ({state.error}): replaced")
            have = state.bytes_present if state.state == "partial" else 0
            needed = remote.size - have
            if state.free_bytes is not None and state.free_bytes < needed:
                directory = remote.path.rsplit("/", 1)[0] or "/"
                delivery.error = (f"no space on {host}: {directory} has {human_bytes(state.free_bytes)} free, the "
                                  f"copy needs {human_bytes(needed)} more ({human_bytes(remote.size)} in all)")
                delivery.fix = f"free {human_bytes(needed - state.free_bytes)} under {directory} on {host}"
                continue
            if not state.writable:
                delivery.error = f"cannot write {remote.path} on {host}: {state.error or 'permission denied'}"
                delivery.fix = f"on {host}: create {remote.path.rsplit('/', 1)[0]} writable by this user"
                continue
            chain.append(host)
            offsets.append(have)
        if not chain:
            break
        offset = min(offsets)
        if round_listener is not None:
            round_listener(round_number, chain, offset)
        for host, have in zip(chain, offsets, strict=True):
            deliveries[host].rounds = round_number
            deliveries[host].sent_bytes += remote.size - max(have, offset)
            if have and round_number == 1:
                deliveries[host].resumed_from = have
        outcomes = relay(source, remote, chain, settings, options, listener, offset)
        pending = []
        for host, outcome in outcomes.items():
            delivery = deliveries[host]
            delivery.ok, delivery.error, delivery.fix = outcome.ok, outcome.error, outcome.fix
            if not outcome.ok:
                pending.append(host)
                if round_number < options.max_rounds:
                    delivery.notes.append(f"round {round_number}: {outcome.error}")
        if not pending:
            break
    for delivery in deliveries.values():
        if not delivery.ok and delivery.error is None:
            delivery.error = f"no good copy after {options.max_rounds} rounds"
    return deliveries


def _probe(host: str, remote: RemoteFile, settings: SshSettings, options: RelayOptions, *, rehash: bool,
           successors: dict[str, str]) -> CopyState:
    successor = successors.get(host)
    warm = None if successor is None else (successor, options.hop_ssh, settings.connect_timeout_s + 5)
    with connect(host, settings) as conn:
        return probe_copy(conn, remote, rehash=rehash, python=options.python, timeout_s=options.probe_timeout_s,
                          warm=warm)


def upload(source: Path, remote: RemoteFile, host: str, settings: SshSettings, options: RelayOptions,
           listener: Listener | None = None) -> Delivery:
    """A verified copy of ``source`` on one host (resumed where a partial copy is there)."""
    return broadcast(source, remote, [host], settings, options, listener)[host]
