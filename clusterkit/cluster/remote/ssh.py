"""SSH to nodes: settings, host-key policy, connections and what their failures mean.

- Host keys are checked against ``~/.ssh/known_hosts`` and ``/etc/ssh/ssh_known_hosts``. Fabric
  auto-adds unknown keys by default; we never do that silently: unknown keys are refused unless
  ``trust_new_hosts`` is set, and each trusted key is appended to known_hosts and logged in
  ``~/.clusterkit/trusted-host-keys.log``. A changed key is always refused, with the command to fix it.
- Passwords live in memory only (``SshSettings.password``) and are never logged.
- Every connection made inside a fan-out is closed when that host's deadline passes (see
  :mod:`clusterkit.cluster.remote.fanout`), so a frozen node cannot keep a thread waiting.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clusterkit.cluster.remote.cancel import on_cancel

if TYPE_CHECKING:
    from fabric import Connection

# paramiko logs every failed handshake (a frozen node's banner timeout, a reset) with a traceback from
# its transport thread; with no handler configured, Python's last-resort handler prints those to the
# terminal. Each failure already reaches the user as that host's result, so they go nowhere here
# (the CLI shows them with CLUSTERKIT_DEBUG=1).
logging.getLogger("paramiko").addHandler(logging.NullHandler())

TRUST_LOG = Path("~/.clusterkit/trusted-host-keys.log")
KNOWN_HOSTS_FILES = (Path("~/.ssh/known_hosts"), Path("/etc/ssh/ssh_known_hosts"))
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


class RemoteError(Exception):
    """A failure on one host that already carries a readable message and, if known, a fix."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


# --------------------------------------------------------------------------------------- host keys


def key_fingerprint(key: Any) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a paramiko key."""
    from clusterkit.node.collect.sshtrust import fingerprint

    return fingerprint(key.get_base64()) or "SHA256:?"


def known_host_name(host: str, port: int | None) -> str:
    """How OpenSSH names a host in known_hosts (``[host]:port`` for non-default ports)."""
    return host if port in (None, 22) else f"[{host}]:{port}"


def load_known_hosts() -> Any:
    """Every key this user's and the system's known_hosts files hold (a ``paramiko.HostKeys``)."""
    import paramiko

    known = paramiko.HostKeys()
    for path in KNOWN_HOSTS_FILES:
        if path.expanduser().is_file():
            known.load(str(path.expanduser()))
    return known


def served_host_key(host: str, settings: SshSettings, prefer: list[str] | None = None) -> Any:
    """The host key sshd on ``host`` serves (key exchange only, no login), preferring ``prefer``'s types
    first as OpenSSH does for keys it already knows."""
    import paramiko

    target, port = ssh_target(host, settings)
    sock = socket.create_connection((target, port), timeout=settings.connect_timeout_s)
    transport = paramiko.Transport(sock)
    on_cancel(transport.close)
    try:
        if prefer:
            options = transport.get_security_options()
            options.key_types = [t for t in options.key_types if t in prefer] + \
                                [t for t in options.key_types if t not in prefer]
        transport.start_client(timeout=settings.connect_timeout_s)
        return transport.get_remote_server_key()
    finally:
        transport.close()


def ssh_target(host: str, settings: SshSettings) -> tuple[str, int]:
    """Hostname and port after ``~/.ssh/config``, as connections will use them."""
    from fabric import Connection

    conn = Connection(host, user=settings.user, port=settings.port)
    return conn.host, int(conn.port)


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
    for known_hosts in KNOWN_HOSTS_FILES:
        if known_hosts.expanduser().is_file():
            client.load_system_host_keys(str(known_hosts.expanduser()))
    client.set_missing_host_key_policy(_make_trust_policy(settings))
    on_cancel(conn.client.close)  # a host past its deadline: close its transport, waking what waits on it
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
