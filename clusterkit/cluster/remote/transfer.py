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
   next round's chain, which resumes their partial copies: a dead node is routed around. Links the
   probe warmed and no hop closed (a round that did not end cleanly, an interrupt) are closed then.

The head's own file is checked first: its size before anything is sent, its sha256 when a copy fails
its checksum (then, not on the way: the stream's hot path does no per-byte work on the head).

The head's side streams from the file through one paramiko channel (never the whole file in memory);
nodes reach the next node with the ``ssh`` client and the keys bootstrap installed, host keys checked.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import itertools
import json
import os
import secrets
import shlex
import shutil
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clusterkit.cluster.remote import HostResult, RemoteError, SshSettings, connect, explain, fan_out
from clusterkit.cluster.remote.cancel import CancelScope, IdleWatchdog, on_cancel, running_in
from clusterkit.cluster.remote.openssh import ssh_argv
from clusterkit.node.relay_hop import CHECKSUM_MISMATCH
from clusterkit.node.relay_hop import human as human_bytes

HOP_SOURCE = Path(__file__).resolve().parents[2] / "node" / "relay_hop.py"
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
    #: Whether the probe left a warmed link (an OpenSSH master) up on this host, for its hop to use.
    warmed: bool = False


@dataclass(frozen=True)
class HopEvent:
    """What a hop reported: ``start``, ``ready`` (it and the hops behind it), ``progress``, ``done``, ``failed``,
    or ``lost`` (its successor)."""

    host: str
    kind: str
    position: int | None
    error: str | None
    at: float
    #: On ``start`` of a hop with a successor: whether its link to it was warmed by the probe.
    warm_link: bool | None = None


Listener = Callable[[HopEvent], None]


@dataclass(frozen=True)
class RelayOptions:
    """How hops run: the ssh argv a node uses to reach the next one, its python, the stall limit."""

    hop_ssh: tuple[str, ...]
    python: str = "python3"
    stall_s: float = 30.0
    probe_timeout_s: float = 60.0
    max_rounds: int = 3
    #: The head's ``ssh`` line to the first hop: OpenSSH spends a fraction of paramiko's CPU per byte, which
    #: on a fast network is the relay's pace. None, or a login it cannot make, and paramiko carries it.
    head_ssh: tuple[str, ...] | None = None
    #: Open each node's SSH link to the next during the probe (OpenSSH control masters) for the hops to use.
    warm_links: bool = True


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
    #: Where the host reads the file when not at the path asked for (``BroadcastOptions.in_place``).
    path: str | None = None


def relay_options(settings: SshSettings, **fields: Any) -> RelayOptions:
    """The options ``env push`` relays with: the nodes' ssh line, and the head's own OpenSSH client where
    there is one and no password is in play (the head then falls back to paramiko only if it cannot log in)."""
    head = head_ssh_argv(settings) if settings.password is None and shutil.which("ssh") else None
    return RelayOptions(hop_ssh=node_ssh_argv(settings), head_ssh=head, **fields)


def node_ssh_argv(settings: SshSettings) -> tuple[str, ...]:
    """The ssh client line a node uses to reach the next one: no prompts, host keys checked, dead peers noticed.

    Without ``--identity``: that path is the head's; nodes log in to each other with their own keys.
    """
    return _relay_ssh_argv(ssh_argv(replace(settings, identity_file=None)))


def head_ssh_argv(settings: SshSettings) -> tuple[str, ...]:
    """The same for the head's first hop, with the head's ``--identity``."""
    return _relay_ssh_argv(ssh_argv(settings))


def _relay_ssh_argv(argv: list[str]) -> tuple[str, ...]:
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


@dataclass(frozen=True)
class LinkWarmUp:
    """The SSH link a probed host opens to the next host of the chain, for its hop to use."""

    successor: str
    ssh: tuple[str, ...]
    tag: str  #: the relay round's: its masters are this round's alone
    wait_s: float  #: how long the probe waits for the login
    persist_s: int  #: how long an unused master stays up


def probe_copy(conn: Any, remote: RemoteFile, *, rehash: bool, python: str = "python3",
               timeout_s: float = 60.0, warm: LinkWarmUp | None = None) -> CopyState:
    """The state of ``remote`` on the host behind ``conn`` (an open Fabric connection).

    ``warm``: where this host will relay, it opens its SSH link to the next host now, as a control master.
    """
    spec: dict[str, Any] = {"op": "probe", "path": remote.path, "size": remote.size, "sha256": remote.sha256,
                            "rehash": rehash}
    if warm is not None:
        spec.update(warm=warm.successor, ssh=list(warm.ssh), tag=warm.tag, warm_timeout_s=warm.wait_s,
                    persist_s=warm.persist_s)
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
                     writable=bool(data["writable"]), error=data.get("error"), warmed=bool(data.get("warmed")))


# ------------------------------------------------------------------------------------------- relay


class _RelayRun:
    """One relay as the head sees it: the hops' events, each host's final word, the chain being ready."""

    def __init__(self, chain: Sequence[str], size: int, options: RelayOptions, listener: Listener | None) -> None:
        self.chain, self.first, self.size, self.options = list(chain), chain[0], size, options
        self.listener = listener
        self.finals: dict[str, HostResult[int]] = {}
        #: The furthest stream position each hop reported of itself (a hop's "lost" names its successor's).
        self.positions: dict[str, int] = {}
        self.last_event = time.monotonic()
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.heard_from_first = False
        self.stderr_tail: list[str] = []
        self.watchdog = self.new_watchdog()

    def new_watchdog(self) -> IdleWatchdog:
        # Past the stall limits: the first hop vanished while a write to it was blocked.
        self.watchdog = IdleWatchdog(CancelScope(), 2 * self.options.stall_s + 15)
        return self.watchdog

    def handle(self, event: HopEvent) -> None:
        self.last_event = event.at
        self.watchdog.alive()
        if event.host == self.first:
            self.heard_from_first = True
            if event.kind == "ready":
                self.ready.set()
        with self.lock:
            if event.position is not None and event.kind != "lost":
                self.positions[event.host] = max(event.position, self.positions.get(event.host, 0))
            if event.kind == "done":
                self.finals.setdefault(event.host, HostResult(event.host, value=self.size))
            elif event.kind in ("failed", "lost"):
                self.finals.setdefault(event.host, HostResult(event.host, error=event.error or event.kind))
        if self.listener is not None:
            self.listener(event)

    def settle(self, exited: Callable[[], bool]) -> None:
        """Wait until the first hop's session ends, every copy is settled, or nothing moved for too long."""
        while not exited():
            if all(host in self.finals for host in self.chain):
                return  # what the hops have left to do is exit
            if time.monotonic() - self.last_event > 2 * self.options.stall_s + 10:
                return
            time.sleep(0.05)

    def first_failed(self, status: int | None) -> None:
        if status not in (0, None) and self.first not in self.finals:
            why = " | ".join(self.stderr_tail[-2:]) or f"exit status {status}"
            self.handle(HopEvent(self.first, "failed", None, f"the relay on {self.first} failed: {why}",
                                 time.monotonic()))

    def first_lost(self, why: str) -> None:
        if self.watchdog.fired:
            why = f"{self.first} stopped answering: nothing moved for {self.watchdog.limit_s:.0f}s"
        self.handle(HopEvent(self.first, "lost", None, f"lost {self.first} while sending: {why}", time.monotonic()))

    def start_readers(self, events: Any, errors: Any) -> list[threading.Thread]:
        readers = [threading.Thread(target=_read_events, args=(events, self.handle, self.ready.set), daemon=True),
                   threading.Thread(target=_read_stderr, args=(errors, self.stderr_tail), daemon=True)]
        for reader in readers:
            reader.start()
        return readers

    def results(self) -> dict[str, HostResult[int]]:
        """Per host: the size on success; else the error, with the furthest position it reported as the value."""
        results = {}
        for host in self.chain:
            final = self.finals.get(host) or HostResult(host, error="no result: cut off behind a lost node")
            if not final.ok:
                final = HostResult(host, value=self.positions.get(host), error=final.error, fix=final.fix)
            results[host] = final
        return results


def relay(source: Path, remote: RemoteFile, chain: Sequence[str], settings: SshSettings, options: RelayOptions,
          listener: Listener | None = None, offset: int = 0, links: str | None = None) -> dict[str, HostResult[int]]:
    """Stream ``source`` from byte ``offset`` along ``chain``; per host: bytes it holds now, or why not.

    The head streams through its OpenSSH client where ``options.head_ssh`` logs in, else through its
    paramiko connection. ``links``: the tag of the round whose probe warmed the node-to-node links.
    A host that reported nothing (cut off behind a lost hop) gets an error saying so.
    """
    run = _RelayRun(chain, remote.size, options, listener)
    spec = {"op": "hop", "label": chain[0], "path": remote.path, "size": remote.size, "sha256": remote.sha256,
            "offset": offset, "next": list(chain[1:]), "ssh": list(options.hop_ssh), "stall_s": options.stall_s,
            "python": options.python, "mux": links}
    command = hop_command(options.python, spec)
    if options.head_ssh is None or not _send_over_openssh(run, source, offset, command, options.head_ssh):
        _send_over_paramiko(run, source, offset, command, settings)
    return run.results()


def _send_over_openssh(run: _RelayRun, source: Path, offset: int, command: str, head_ssh: Sequence[str]) -> bool:
    """Stream with the ``ssh`` client; False when it got no word from the first hop (no login: fall back)."""
    try:
        proc = subprocess.Popen([*head_ssh, run.first, command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError:
        return False
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    watchdog = run.new_watchdog()
    with watchdog, running_in(watchdog.scope):
        on_cancel(proc.kill)
        readers = run.start_readers(proc.stdout, proc.stderr)
        run.ready.wait(run.options.stall_s)  # past that, send anyway: the stall limits end a chain that hangs
        if not run.heard_from_first and not readers[0].is_alive():  # ssh ended without a word from the hop
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            readers[1].join(timeout=5)
            run.stderr_tail.clear()
            run.ready.clear()
            return False
        try:
            with open(source, "rb") as stream:
                position, size = offset, os.fstat(stream.fileno()).st_size
                while position < size:
                    sent = os.sendfile(proc.stdin.fileno(), stream.fileno(), position, CHUNK)
                    if not sent:
                        break
                    position += sent
                    watchdog.alive()
            proc.stdin.close()
        except OSError as exc:  # ssh is gone: what it said says why
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            for reader in readers:
                reader.join(timeout=5)
            run.first_lost(" | ".join(run.stderr_tail[-2:]) or exc.strerror or str(exc))
            return True
        run.settle(lambda: proc.poll() is not None)
        status = proc.poll()
        if status is None:  # every copy is settled (or the chain went quiet): the hops exit on their own
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for reader in readers:
            reader.join(timeout=5)
    if proc.poll() is None:
        proc.kill()
    run.first_failed(status)
    return True


def _send_over_paramiko(run: _RelayRun, source: Path, offset: int, command: str, settings: SshSettings) -> None:
    stall_s = run.options.stall_s
    watchdog = run.new_watchdog()
    try:
        with watchdog, running_in(watchdog.scope), connect(run.first, settings) as conn:
            channel = conn.client.get_transport().open_session(timeout=settings.connect_timeout_s)
            channel.exec_command(command)
            readers = run.start_readers(channel.makefile("rb"), channel.makefile_stderr("rb"))
            run.ready.wait(stall_s)  # past that, send anyway: the stall limits end a chain that hangs
            channel.settimeout(stall_s)
            with open(source, "rb") as stream:
                stream.seek(offset)
                while block := stream.read(CHUNK):
                    channel.sendall(block)
                    watchdog.alive()
            channel.shutdown_write()
            run.settle(channel.exit_status_ready)
            status = channel.exit_status if channel.exit_status_ready() else None
            if status is None:
                channel.close()  # the readers then see the end of the stream
            for reader in readers:
                reader.join(timeout=5)
            channel.close()
            run.first_failed(status)
    except Exception as exc:  # the first hop is lost: the whole chain behind it gets nothing more
        run.first_lost(str(explain(exc, run.first, settings)))


def _read_events(stream: Any, handle: Callable[[HopEvent], None], ended: Callable[[], None]) -> None:
    try:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            if not line.startswith(MARKER):
                continue
            try:
                data = json.loads(line[len(MARKER):])
            except ValueError:
                continue
            position = data.get("pos")
            warm = data.get("warm_link")
            handle(HopEvent(str(data.get("host")), str(data.get("ev")),
                            int(position) if isinstance(position, int) else None, data.get("error"),
                            time.monotonic(), warm if isinstance(warm, bool) else None))
    finally:
        ended()


def _read_stderr(stream: Any, tail: list[str]) -> None:
    for raw in iter(stream.readline, b""):
        text = raw.decode("utf-8", "replace").strip()
        if text:
            tail[:] = [*tail, text][-6:]


# --------------------------------------------------------------------------------------- broadcast


def broadcast(source: Path, remote: RemoteFile, hosts: Sequence[str], settings: SshSettings,
              options: RelayOptions, listener: Listener | None = None,
              round_listener: Callable[[int, list[str], int], None] | None = None) -> dict[str, Delivery]:
    """A verified copy of ``source`` at ``remote.path`` on every host that can take one, in rounds.

    The head's own file is checked first (its size; its sha256 when copies fail their checksum): a bad
    source is named as such, never resent round after round as if the network had failed."""
    deliveries = {host: Delivery(host, ok=False) for host in hosts}
    bad_source = _source_problem(source, remote, rehash=False)
    pending = [] if bad_source else list(hosts)
    for round_number in range(1, options.max_rounds + 1):
        if not pending:
            break
        # Each host warms its link to the host after it: the chain is these hosts in this order, less
        # those found complete or unable to take the file (whose successors then connect directly).
        successors = dict(itertools.pairwise(pending)) if options.warm_links else {}
        links = secrets.token_hex(4) if options.warm_links else None  # this round's own: no other relay's
        probe = functools.partial(_probe, remote=remote, settings=settings, options=options,
                                  rehash=round_number == 1, successors=successors, links=links)
        try:
            states = fan_out(pending, probe, options.probe_timeout_s, settings=settings)
            warmed = [h for h in pending if (state := states[h].value) is not None and state.warmed]
            chain, offsets = _chain(pending, states, deliveries, remote)
            if not chain:
                _unwarm(warmed, successors, links, settings, options)
                break
            offset = min(offsets)
            if round_listener is not None:
                round_listener(round_number, chain, offset)
            for host in chain:
                deliveries[host].rounds = round_number
            outcomes = relay(source, remote, chain, settings, options, listener, offset, links)
        except BaseException:  # interrupted (Ctrl-C): no link of this round is left up for minutes
            _unwarm(list(successors), successors, links, settings, replace(options, probe_timeout_s=5))
            raise
        if len(chain) < len(pending) or not all(outcome.ok for outcome in outcomes.values()):
            # Some link went unused, or a hop may have ended before closing its own: close what is left.
            _unwarm(warmed, successors, links, settings, options)
        pending = []
        for (host, outcome), have in zip(outcomes.items(), offsets, strict=True):
            delivery = deliveries[host]
            reached = remote.size if outcome.ok else (outcome.value or 0)
            delivery.sent_bytes += max(0, reached - max(have, offset))  # what it got, not what was meant for it
            if have and round_number == 1:
                delivery.resumed_from = have
            delivery.ok, delivery.error, delivery.fix = outcome.ok, outcome.error, outcome.fix
            if not outcome.ok:
                pending.append(host)
                if round_number < options.max_rounds:
                    delivery.notes.append(f"round {round_number}: {outcome.error}")
        if any(str(deliveries[h].error).startswith(CHECKSUM_MISMATCH) for h in pending):
            bad_source = _source_problem(source, remote, rehash=True)
            if bad_source:
                break
    for delivery in deliveries.values():
        if bad_source and not delivery.ok:
            delivery.error, delivery.fix = bad_source
        elif not delivery.ok and delivery.error is None:
            delivery.error = f"no good copy after {options.max_rounds} rounds"
    return deliveries


def _chain(pending: list[str], states: dict[str, HostResult[CopyState]], deliveries: dict[str, Delivery],
           remote: RemoteFile) -> tuple[list[str], list[int]]:
    """The hosts of this round's chain (in order) and the bytes each already has; the others' outcomes set."""
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
    return chain, offsets


def _source_problem(source: Path, remote: RemoteFile, *, rehash: bool) -> tuple[str, str] | None:
    """What is wrong with the head's own file (its size; with ``rehash``, its sha256), with the fix; None: nothing."""
    try:
        size = source.stat().st_size
        if size == remote.size and not (rehash and _sha256_of(source) != remote.sha256):
            return None
    except OSError as exc:
        return f"the head cannot read {source}: {exc.strerror}", f"check {source} on this machine"
    what = (f"is {human_bytes(size)} ({size} bytes), not {human_bytes(remote.size)} ({remote.size} bytes) as "
            "expected" if size != remote.size
            else "does not have the sha256 expected (it changed since its checksum was taken)")
    return (f"the head's own {source} {what}: no copy of it can be right", f"replace {source} with a whole copy "
            "(for an env archive: pack it again), then rerun")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _unwarm(hosts: list[str], successors: dict[str, str], links: str | None, settings: SshSettings,
            options: RelayOptions) -> None:
    """Close this round's warmed links on ``hosts`` (each host's master to its successor), in parallel."""
    hosts = [h for h in hosts if h in successors]
    if not hosts or links is None:
        return

    def close(host: str) -> None:
        spec = {"op": "unwarm", "warm": successors[host], "ssh": list(options.hop_ssh), "tag": links}
        with connect(host, settings) as conn:
            conn.run(hop_command(options.python, spec), hide=True, warn=True, timeout=options.probe_timeout_s)

    fan_out(hosts, close, min(options.probe_timeout_s, settings.connect_timeout_s + 10), settings=settings)


def _probe(host: str, remote: RemoteFile, settings: SshSettings, options: RelayOptions, *, rehash: bool,
           successors: dict[str, str], links: str | None) -> CopyState:
    successor = successors.get(host)
    warm = None if successor is None or links is None else \
        LinkWarmUp(successor, options.hop_ssh, links, settings.connect_timeout_s + 5,
                   int(options.probe_timeout_s + options.stall_s + 30))
    with connect(host, settings) as conn:
        return probe_copy(conn, remote, rehash=rehash, python=options.python, timeout_s=options.probe_timeout_s,
                          warm=warm)


def upload(source: Path, remote: RemoteFile, host: str, settings: SshSettings, options: RelayOptions,
           listener: Listener | None = None) -> Delivery:
    """A verified copy of ``source`` on one host (resumed where a partial copy is there)."""
    return broadcast(source, remote, [host], settings, options, listener)[host]
