"""Failed SSH connections say what the network said, each with its own fix."""

from __future__ import annotations

import errno
import socket

import pytest
from paramiko.ssh_exception import NoValidConnectionsError

from clusterkit.cluster.remote import SshSettings, connect, explain

SETTINGS = SshSettings(connect_timeout_s=3)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wrapped(code: int) -> NoValidConnectionsError:
    """What paramiko raises: every address it tried, each with its own error (its own errno is None)."""
    return NoValidConnectionsError({("10.0.0.9", 22): OSError(code, "x"), ("fe80::9", 22, 0, 0): OSError(code, "x")})


def test_a_refused_connection_says_nothing_listens_and_to_start_sshd() -> None:
    port = closed_port()
    with pytest.raises(Exception) as caught, connect("127.0.0.1", SshSettings(port=port, connect_timeout_s=3)):
        pass
    said = explain(caught.value, "127.0.0.1", SshSettings(port=port))
    assert str(said) == (f"127.0.0.1 port {port}: connection refused: the host is up but nothing listens there "
                         "(sshd not running, or another port)")
    assert said.fix is not None and "systemctl enable --now ssh" in said.fix


@pytest.mark.parametrize(("code", "said", "fix"), [
    (errno.EHOSTUNREACH, "no route to host: the host is down, or no machine has that address",
     "check the address in the hostfile and that h1 is powered on: ping h1"),
    (errno.ENETUNREACH, "network unreachable", "ip route get h1"),
    (errno.ETIMEDOUT, "connection timed out", "nc -vz h1 22"),
])
def test_each_network_error_has_its_own_message_and_fix(code: int, said: str, fix: str) -> None:
    explained = explain(wrapped(code), "h1", SETTINGS)
    assert str(explained).startswith(f"h1 port 22: {said}")
    assert explained.fix is not None and fix in explained.fix
    assert "systemctl" not in explained.fix


def test_a_connection_lost_mid_command_is_named_as_such() -> None:
    explained = explain(EOFError(), "h1", SETTINGS)
    assert str(explained) == "connection to h1 lost (the node closed it or went down mid-command)"
