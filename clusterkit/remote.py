"""SSH fan-out: the one place clusterkit talks to nodes (Fabric over paramiko).

- Every host runs in its own daemon thread under one deadline: a dead or frozen node becomes a
  :class:`HostResult` with an error ("no answer within 30s"), the others are reported in full, and an
  abandoned thread never keeps the process alive.
- Host keys are checked against ``~/.ssh/known_hosts`` and ``/etc/ssh/ssh_known_hosts``. Fabric
  auto-adds unknown keys by default; we never do that silently: unknown keys are refused unless
  ``trust_new_hosts`` is set, and each trusted key is appended to known_hosts and logged in
  ``~/.clusterkit/trusted-host-keys.log``. A changed key is always refused, with the command to fix it.
- Passwords live in memory only (``SshSettings.password``) and are never logged.
- The agent (``clusterkit.agent`` + collectors + pynvml) is shipped as a zipapp to a private,
  per-user cache directory on each node, keyed by its content hash.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import logging
import math
import os
import shlex
import socket
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from clusterkit import __version__
from clusterkit.progress import NodeProgress

if TYPE_CHECKING:
    from fabric import Connection

# paramiko logs every failed handshake (a frozen node's banner timeout, a reset) with a traceback from
# its transport thread; with no handler configured, Python's last-resort handler prints those to the
# terminal. Each failure already reaches the user as that host's result, so they go nowhere here
# (the CLI shows them with CLUSTERKIT_DEBUG=1).
logging.getLogger("paramiko").addHandler(logging.NullHandler())

T = TypeVar("T")
PACKAGE_DIR = Path(__file__).resolve().parent
TRUST_LOG = Path("~/.clusterkit/trusted-host-keys.log")
_trust_lock = threading.Lock()


@dataclass(frozen=True)
class SshSettings:
    """How to reach nodes. Unset fields fall back to ``~/.ssh/config`` and ssh's defaults."""

    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    password: str | None = field(default=None, repr=False)
    trust_new_hosts: bool = False
    connect_timeout_s: float = 10.0
    #: False for dry runs: trusted keys are accepted for this run only, nothing is written.
    record_trust: bool = True


@dataclass
class HostResult(Generic[T]):
    """One host's outcome: a value, or an error saying what went wrong and how to fix it."""

    host: str
    value: T | None = None
    error: str | None = None
    fix: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class RemoteError(Exception):
    """A failure on one host that already carries a readable message and, if known, a fix."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


# --------------------------------------------------------------------------------------- host keys


def key_fingerprint(key: Any) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a paramiko key."""
    from clusterkit.collect.sshtrust import fingerprint

    return fingerprint(key.get_base64()) or "SHA256:?"


def known_host_name(host: str, port: int | None) -> str:
    """How OpenSSH names a host in known_hosts (``[host]:port`` for non-default ports)."""
    return host if port in (None, 22) else f"[{host}]:{port}"


def _make_trust_policy(settings: SshSettings) -> Any:
    import paramiko

    class TrustAndRecord(paramiko.MissingHostKeyPolicy):
        """--trust-new-hosts: accept an unknown key, write it to known_hosts and log it."""

        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
            if settings.record_trust:
                record_trusted_key(hostname, key)
            client.get_host_keys().add(hostname, key.get_name(), key)

    return TrustAndRecord() if settings.trust_new_hosts else paramiko.RejectPolicy()


def record_trusted_key(hostname: str, key: Any) -> None:
    """Append ``key`` to ``~/.ssh/known_hosts`` (0600, in a 0700 dir) and log the decision."""
    ssh_dir = Path("~/.ssh").expanduser()
    with _trust_lock:
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        known_hosts = ssh_dir / "known_hosts"
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(line)
        log = TRUST_LOG.expanduser()
        log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} trusted {hostname} {key.get_name()} "
                    f"{key_fingerprint(key)} (--trust-new-hosts)\n")


# ------------------------------------------------------------------------------------ connections


@contextmanager
def connect(host: str, settings: SshSettings) -> Iterator[Connection]:
    """An open Fabric connection with strict host-key checking; closed on exit."""
    from fabric import Connection

    timeout = max(1, math.ceil(settings.connect_timeout_s))
    connect_kwargs: dict[str, Any] = {"banner_timeout": timeout, "auth_timeout": timeout,
                                      "channel_timeout": timeout}
    if settings.identity_file:
        connect_kwargs["key_filename"] = [str(Path(settings.identity_file).expanduser())]
    if settings.password is not None:
        connect_kwargs["password"] = settings.password
    conn = Connection(host, user=settings.user, port=settings.port, connect_timeout=timeout,
                      connect_kwargs=connect_kwargs)
    client = conn.client
    for known_hosts in (Path("~/.ssh/known_hosts").expanduser(), Path("/etc/ssh/ssh_known_hosts")):
        if known_hosts.is_file():
            client.load_system_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(_make_trust_policy(settings))
    try:
        conn.open()
        yield conn
    finally:
        conn.close()


#: What the network said when a TCP connection failed, and the fix for each (errno -> text, fix).
_CONNECT_ERRORS: dict[int, tuple[str, str]] = {
    errno.ECONNREFUSED: ("connection refused: the host is up but nothing listens there (sshd not running, "
                         "or another port)",
                         "on {host}: sudo systemctl enable --now ssh (or sshd); or pass --ssh-port"),
    errno.EHOSTUNREACH: ("no route to host: the host is down, or no machine has that address",
                         "check the address in the hostfile and that {host} is powered on: ping {host}"),
    errno.ENETUNREACH: ("network unreachable: this machine has no route to that network",
                        "check this machine's routes (ip route get {host}) and the address in the hostfile"),
    errno.ETIMEDOUT: ("connection timed out: nothing answered (host down, or a firewall drops the port)",
                      "check that {host} is up and port {port} is open: ping {host}; nc -vz {host} {port}"),
    errno.ECONNRESET: ("connection reset by the host (sshd closed it: MaxStartups, or a TCP wrapper)",
                       "look at sshd's log on {host} (journalctl -u ssh); retry in a moment"),
}


def _connect_errno(exc: OSError) -> int | None:
    """The errno of a failed connect, also from inside paramiko's NoValidConnectionsError.

    paramiko wraps the errors of every address it tried (IPv4 and IPv6) in one exception whose own
    errno is None; the most telling one wins (refused says more than unreachable).
    """
    import paramiko

    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        found = [e.errno for e in exc.errors.values() if isinstance(e, OSError) and e.errno]
        for code in _CONNECT_ERRORS:
            if code in found:
                return code
        return found[0] if found else None
    return exc.errno


def explain(exc: BaseException, host: str, settings: SshSettings) -> RemoteError:
    """Turn SSH/socket/invoke exceptions into one readable line plus the fix."""
    import paramiko
    from invoke.exceptions import CommandTimedOut, UnexpectedExit

    port = settings.port or 22
    if isinstance(exc, RemoteError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return RemoteError(
            f"host key for {host} CHANGED (got {exc.key.get_name()} {key_fingerprint(exc.key)}, known_hosts has "
            f"{key_fingerprint(exc.expected_key)}): the machine was reinstalled, or someone is in the middle",
            fix=f"verify the new key out of band (on {host}: ssh-keygen -lf /etc/ssh/ssh_host_"
                f"{exc.key.get_name().replace('ssh-', '')}_key.pub), then: ssh-keygen -R "
                f"{shlex.quote(known_host_name(host, settings.port))} && rerun with --trust-new-hosts")
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return RemoteError(
            f"host key of {host} is unknown (not in ~/.ssh/known_hosts)",
            fix="check the fingerprints, then rerun with --trust-new-hosts (recorded in "
                f"{TRUST_LOG}), or: ssh-keyscan -p {port} -H {shlex.quote(host)} >> ~/.ssh/known_hosts")
    if isinstance(exc, paramiko.AuthenticationException):
        return RemoteError(f"authentication to {host} failed: no key or password was accepted",
                           fix="run `clusterkit bootstrap HOSTFILE` (asks the password once and installs "
                               "keys), or pass --user/--identity")
    if isinstance(exc, socket.gaierror):
        return RemoteError(f"cannot resolve hostname {host}: {exc.strerror}",
                           fix=f"add {host} to DNS or /etc/hosts on this machine")
    code = _connect_errno(exc) if isinstance(exc, OSError) else None
    if code is not None and code in _CONNECT_ERRORS:
        what, fix = _CONNECT_ERRORS[code]
        return RemoteError(f"{host} port {port}: {what}", fix=fix.format(host=host, port=port))
    if isinstance(exc, EOFError) or (isinstance(exc, paramiko.SSHException) and "eof" in str(exc).lower()):
        return RemoteError(f"connection to {host} lost (the node closed it or went down mid-command)",
                           fix=f"check that {host} is up (ping {host}; ssh {host} uptime), then rerun")
    # A frozen sshd still accepts TCP (the kernel does that) but never greets: paramiko then reports
    # a banner timeout, or "No existing session" when its transport thread gave up first.
    if isinstance(exc, (TimeoutError, socket.timeout)) or (
            isinstance(exc, paramiko.SSHException) and any(
                text in str(exc).lower() for text in ("banner", "no existing session"))):
        return RemoteError(f"{host} did not answer within {settings.connect_timeout_s:g}s "
                           "(down, frozen, or a firewall drops port {port})".replace("{port}", str(port)),
                           fix=f"check that {host} is up: ping {host}; ssh -v {host} true")
    if isinstance(exc, CommandTimedOut):
        return RemoteError(f"command on {host} did not finish within {exc.timeout:g}s "
                           f"({exc.result.command[:80]!r})")
    if isinstance(exc, UnexpectedExit):
        tail = (exc.result.stderr.strip() or exc.result.stdout.strip()).splitlines()[-3:]
        return RemoteError(f"command on {host} exited {exc.result.exited}: {' | '.join(tail)}")
    if isinstance(exc, OSError):
        return RemoteError(f"network error talking to {host}: {exc.strerror or exc}")
    return RemoteError(f"{type(exc).__name__} on {host}: {exc}")


def fan_out(hosts: Sequence[str], task: Callable[[str], T], timeout_s: float,
            progress: NodeProgress | None = None, settings: SshSettings | None = None
            ) -> dict[str, HostResult[T]]:
    """Run ``task(host)`` for every host in parallel; each gets ``timeout_s``, nobody waits longer.

    Exceptions become per-host errors (see :func:`explain`). Results keep ``hosts`` order.
    """
    settings = settings or SshSettings()
    results: dict[str, HostResult[T]] = {}
    lock = threading.Lock()

    def work(host: str) -> None:
        started = time.monotonic()
        try:
            value = task(host)
            result: HostResult[T] = HostResult(host, value=value, seconds=time.monotonic() - started)
        except Exception as exc:  # every failure is a per-host value, never a crash of the run
            err = explain(exc, host, settings)
            result = HostResult(host, error=str(err), fix=err.fix, seconds=time.monotonic() - started)
        with lock:
            results.setdefault(host, result)
        if progress:
            progress.update(host, "ok" if result.ok else "failed", "" if result.ok else str(result.error))

    threads = [threading.Thread(target=work, args=(h,), name=f"ssh:{h}", daemon=True) for h in hosts]
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with lock:
        for host in hosts:
            if host not in results:
                results[host] = HostResult(host, error=f"{host} gave no answer within {timeout_s:g}s "
                                                       "(frozen, overloaded, or a hung driver?)",
                                           fix=f"check {host} by hand: ssh {host} uptime",
                                           seconds=timeout_s)
                if progress:
                    progress.update(host, "timed out", f"no answer within {timeout_s:g}s")
        return {h: results[h] for h in hosts}


# ------------------------------------------------------------------------------------------- agent


@functools.cache
def agent_zipapp() -> bytes:
    """The agent as a zipapp: clusterkit.agent, facts, collectors, and pynvml when installed."""
    files = {"__main__.py": "from clusterkit.agent import main\nraise SystemExit(main())\n",
             "clusterkit/__init__.py": (PACKAGE_DIR / "__init__.py").read_text()}
    for name in ("facts.py", "agent.py"):
        files[f"clusterkit/{name}"] = (PACKAGE_DIR / name).read_text()
    for path in sorted((PACKAGE_DIR / "collect").glob("*.py")):
        files[f"clusterkit/collect/{path.name}"] = path.read_text()
    try:
        import pynvml

        files["pynvml.py"] = Path(pynvml.__file__).read_text()
    except ImportError:
        pass
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            # A fixed timestamp keeps the archive, and so its digest and the copy on nodes, the same
            # from one run to the next.
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), text,
                        compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def agent_digest() -> str:
    return hashlib.sha256(agent_zipapp()).hexdigest()[:16]


def agent_remote_path() -> str:
    """Where the agent lives on a node (an unpacked directory): a shell word, expanded there."""
    return f'"${{TMPDIR:-/tmp}}/clusterkit-$(id -u)/agent-{agent_digest()}"'


def ship_agent(conn: Connection, timeout_s: float) -> str:
    """Unpack the agent into ``$TMPDIR/clusterkit-<uid>/agent-<digest>/`` on the node; return that path.

    Unpacked rather than run from the zip so Python caches its bytecode there: that makes every later
    agent run three times cheaper in CPU, which adds up over a fan-out.
    """
    digest = agent_digest()
    probe = conn.run(
        'd="${TMPDIR:-/tmp}/clusterkit-$(id -u)"; mkdir -p -m 700 "$d" || exit 3; '
        '[ -O "$d" ] || { echo "$d is not owned by $(id -un)" >&2; exit 4; }; chmod 700 "$d"; '
        f'a="$d/agent-{digest}"; if [ -s "$a/__main__.py" ] && [ -O "$a" ]; then echo "present $a"; '
        'else echo "missing $a"; fi',
        hide=True, warn=True, timeout=timeout_s)
    if probe.exited != 0 or not probe.stdout.strip():
        why = probe.stderr.strip() or probe.stdout.strip()
        raise RemoteError(f"cannot prepare the agent directory: {why}")
    state, path = str(probe.stdout).split()[-2:]
    if state == "missing":
        # Names unique to this writer: two clusterkit runs (from one head or several) may ship the same
        # agent to a node at once; each unpacks on its own and the first rename wins.
        scratch = f"{path}.{uuid.uuid4().hex[:12]}"
        zip_path = f"{scratch}.pyz"
        conn.put(io.BytesIO(agent_zipapp()), remote=zip_path)
        q, z, t = shlex.quote(path), shlex.quote(zip_path), shlex.quote(scratch + ".tmp")
        unpack = conn.run(
            f'PY="$(command -v python3)" || {{ echo "no python3 on PATH" >&2; exit 127; }}; '
            f'"$PY" -m zipfile -e {z} {t} && rm -f {z} && chmod -R go-rwx {t} '
            f'&& {{ mv -T {t} {q} 2>/dev/null || rm -rf {t}; }}',
            hide=True, warn=True, timeout=timeout_s)
        if unpack.exited != 0:
            conn.run(f"rm -rf {z} {t}", hide=True, warn=True, timeout=timeout_s)
            if unpack.exited == 127:
                raise RemoteError(f"{conn.host} has no python3 on the non-interactive PATH",
                                  fix=f"install python3 on {conn.host} (the agent needs only the standard library)")
            raise RemoteError(f"cannot unpack the agent on {conn.host}: {unpack.stderr.strip()}",
                              fix=f"check free space and permissions of {path.rsplit('/', 1)[0]} on {conn.host}")
    return path


@dataclass
class AgentReply:
    """What the agent printed, and when (node clock just before printing / head clock on receipt)."""

    result: Any
    node_clock: float | None
    received_at: float

    @property
    def clock_offset_s(self) -> float | None:
        """Node clock minus head clock; off by at most the one-way network delay plus process exit."""
        return None if self.node_clock is None else self.node_clock - self.received_at


def check_wire(payload: dict[str, Any], host: str) -> None:
    """The agent that answered speaks this clusterkit's protocol and facts schema, else say which side
    is older. (clusterkit ships its own agent, so a mismatch is a stale or foreign agent directory.)"""
    from clusterkit.agent import AGENT_PROTOCOL
    from clusterkit.facts import SCHEMA_VERSION

    theirs = (payload.get("protocol"), payload.get("schema_version"))
    if theirs == (AGENT_PROTOCOL, SCHEMA_VERSION):
        return
    older = isinstance(theirs[0], int) and theirs[0] < AGENT_PROTOCOL
    raise RemoteError(
        f"the agent on {host} speaks protocol {theirs[0]} (facts schema {theirs[1]}), this clusterkit "
        f"{__version__} speaks {AGENT_PROTOCOL} (schema {SCHEMA_VERSION}): the node's agent is "
        + ("older" if older else "newer"),
        fix=(f"on {host}: rm -rf \"${{TMPDIR:-/tmp}}/clusterkit-$(id -u)\" (clusterkit ships its agent again)"
             if older else "upgrade clusterkit on this machine to the version that shipped that agent"))


def parse_agent_output(stdout: str, host: str, received_at: float | None = None) -> AgentReply:
    """Find the agent's result line; a shell that prints banners cannot break this."""
    from clusterkit.agent import RESULT_MARKER

    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if not lines:
        tail = " | ".join(stdout.strip().splitlines()[-3:]) or "no output"
        raise RemoteError(f"the agent on {host} printed no result ({tail})")
    payload = json.loads(lines[-1][len(RESULT_MARKER):])
    check_wire(payload, host)
    if "error" in payload:
        raise RemoteError(f"the agent on {host} failed: {payload['error']}")
    clock = payload.get("clock_unix")
    return AgentReply(payload["result"], float(clock) if isinstance(clock, (int, float)) else None,
                      received_at if received_at is not None else time.time())


_NEED_AGENT = "@@clusterkit-need-agent@@"


def run_agent_reply(conn: Connection, args: list[str], timeout_s: float, python: str | None = None) -> AgentReply:
    """Run ``agent ARGS`` with the node's python3 (shipping the agent first if it is not there yet)."""
    path = agent_remote_path()
    fallback = f" || command -v {shlex.quote(python)}" if python else ""
    # Only run an agent we own from a directory we own: /tmp is shared with other users.
    command = (f'a={path}; if [ ! -s "$a/__main__.py" ] || [ ! -O "$a" ] || [ ! -O "${{a%/*}}" ]; '
               f'then echo {_NEED_AGENT}; exit 0; fi; '
               f'PY="$(command -v python3{fallback})"; '
               '[ -n "$PY" ] || { echo "no python3 on PATH" >&2; exit 127; }; '
               # -I: the node's PYTHON* variables cannot break the agent, and bytecode gets cached;
               # -S: no site-packages, the agent is stdlib-only (and starts faster without them).
               f'exec "$PY" -I -S "$a" {" ".join(shlex.quote(a) for a in args)}')
    for _ in range(2):
        result = conn.run(command, hide=True, warn=True, timeout=timeout_s)
        received_at = time.time()
        if _NEED_AGENT not in result.stdout:
            break
        ship_agent(conn, min(timeout_s, 15.0))
    if result.exited == 127 and "no python3" in result.stderr:
        raise RemoteError(f"{conn.host} has no python3 on the non-interactive PATH",
                          fix=f"install python3 on {conn.host} (the agent needs only the standard library)")
    return parse_agent_output(result.stdout, conn.host, received_at)


def run_agent(conn: Connection, args: list[str], timeout_s: float, python: str | None = None) -> Any:
    """Run ``agent ARGS`` on the node and return its result."""
    return run_agent_reply(conn, args, timeout_s, python).result
