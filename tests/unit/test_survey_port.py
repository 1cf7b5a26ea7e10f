"""The master port a launch uses when none is given: DeepSpeed's 29500 while it is free, else a free one.

The snippet runs on the first host with whatever Python 3 is there; here it runs with this one.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from clusterkit.survey import _PICK_PORT, DEFAULT_MASTER_PORT


def picked_port() -> int:
    out = subprocess.run([sys.executable, "-c", _PICK_PORT], capture_output=True, text=True, timeout=30, check=True)
    return int(out.stdout)


def listening_on(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("", port))
    except OSError:
        sock.close()
        pytest.skip(f"port {port} is in use on this machine")
    sock.listen()
    return sock


def test_deepspeeds_default_port_is_kept_while_it_is_free() -> None:
    listening_on(DEFAULT_MASTER_PORT).close()
    assert picked_port() == DEFAULT_MASTER_PORT


def test_a_busy_default_port_is_traded_for_another_free_port() -> None:
    with listening_on(DEFAULT_MASTER_PORT):
        port = picked_port()
    assert port != DEFAULT_MASTER_PORT
    assert 0 < port < 65536
