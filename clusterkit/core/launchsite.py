"""The launching machine: which hostfile entry (if any) is this machine, and what runs here.

DeepSpeed's runner runs where ``deepspeed`` is typed: it looks up ``pdsh`` on this machine's PATH,
reads ``~/.deepspeed_env`` and ``./.deepspeed_env`` here and exports them to every rank, and with a
single active host it starts the ranks here, without SSH, whatever the hostfile names. So "is this
entry me?" decides what a node needs (sshd, pdsh) and how a launch line must read. It is decided in
one place, here: a hostfile entry is this machine when it resolves to an address of one of this
machine's interfaces (loopback included), as the SSH client would reach it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clusterkit.node.collect.network import read_addresses

#: How long name resolution of the hostfile may take before unresolved names count as other machines.
RESOLVE_TIMEOUT_S = 5.0


def local_addresses() -> set[str]:
    """Every address of this machine's interfaces, without prefix lengths."""
    found: set[str] = set()
    addresses, _ = read_addresses()
    for ipv4, ipv6 in addresses.values():
        for cidr in [*ipv4, *ipv6]:
            found.add(cidr.split("/")[0].split("%")[0])
    return found


def _ssh_hostname(name: str) -> str:
    """The address ssh connects to for ``name`` (a ``HostName`` in ~/.ssh/config wins)."""
    try:
        from paramiko import SSHConfig

        config_path = Path("~/.ssh/config").expanduser()
        if config_path.is_file():
            return str(SSHConfig.from_path(str(config_path)).lookup(name).get("hostname", name))
    except Exception:  # an unreadable ssh config leaves the name as it is, as ssh would fail later anyway
        pass
    return name


def _resolve(name: str) -> set[str]:
    try:
        return {str(info[4][0]).split("%")[0]
                for info in socket.getaddrinfo(_ssh_hostname(name), None, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return set()


def _is_local(address: str, mine: set[str]) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback or address in mine
    except ValueError:
        return False


def local_entries(names: Sequence[str]) -> list[str]:
    """The hostfile names that are this machine, in hostfile order.

    Names are resolved in parallel under one deadline: a name that does not resolve in time is
    another machine (SSH will say why it cannot be reached).
    """
    mine = local_addresses()
    resolved: dict[str, set[str]] = {}

    def resolve(name: str) -> None:
        resolved[name] = _resolve(name)

    threads = [threading.Thread(target=resolve, args=(n,), daemon=True, name=f"resolve:{n}") for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RESOLVE_TIMEOUT_S)
    return [n for n in names if any(_is_local(a, mine) for a in resolved.get(n, set()))]


@dataclass(frozen=True)
class LaunchPlace:
    """Where a launch over these hosts happens, and what that asks of the nodes."""

    #: The hostfile entry that is this machine, or None for a head outside the hostfile (a login node).
    entry: str | None
    #: This machine's name in reports: its hostfile entry, else its hostname.
    name: str
    #: The only active host is this machine: DeepSpeed starts the ranks here, with no SSH and no pdsh.
    local_only: bool

    @property
    def in_hostfile(self) -> bool:
        return self.entry is not None


def launch_place(active: Sequence[str]) -> LaunchPlace:
    """Where jobs over the ``active`` hosts are launched from: this machine."""
    entries = local_entries(active)
    entry = entries[0] if entries else None
    return LaunchPlace(entry=entry, name=entry or socket.gethostname(),
                       local_only=len(active) == 1 and entry is not None)
