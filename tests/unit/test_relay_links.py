"""The SSH links a relay warms between nodes: where their sockets live, and when there are none.

Each relay round has its own tag; a node's master to its successor listens at
``$TMPDIR/clusterkit-relay-UID/TAG-%C`` and the hop's ssh uses it only when it is there.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusterkit.node import relay_hop


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp directory with a short path, as /tmp is (pytest's own are too long for a socket)."""
    path = Path(tempfile.mkdtemp(prefix="ck", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmpdir_(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("tempfile.tempdir", str(short_tmp))
    return short_tmp


def own_directory(tmp: Path) -> Path:
    return tmp / f"clusterkit-relay-{os.getuid()}"


def test_a_rounds_sockets_live_where_only_this_user_can_enter(tmpdir_: Path) -> None:
    assert relay_hop.control_path("a1b2c3d4") == f"{own_directory(tmpdir_)}/a1b2c3d4-%C"
    assert own_directory(tmpdir_).stat().st_mode & 0o777 == 0o700


def test_no_master_is_warmed_in_a_directory_others_can_enter(tmpdir_: Path) -> None:
    own_directory(tmpdir_).mkdir()
    own_directory(tmpdir_).chmod(0o777)
    assert relay_hop.control_path("a1b2c3d4") is None
    assert relay_hop.warm_up(["ssh"], "node2", "a1b2c3d4", 60) is None


def test_no_master_is_warmed_through_a_symlink(tmpdir_: Path) -> None:
    elsewhere = tmpdir_ / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    own_directory(tmpdir_).symlink_to(elsewhere)
    assert relay_hop.control_path("a1b2c3d4") is None


def test_a_temp_directory_too_long_for_a_socket_means_direct_connections(short_tmp: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenSSH's client stops with "ControlPath too long" instead of connecting directly: no master then.
    deep = short_tmp / ("d" * 40)
    deep.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(deep))
    assert relay_hop.control_path("a1b2c3d4") is None


def test_a_tag_that_is_not_a_short_lowercase_word_is_refused(tmpdir_: Path) -> None:
    assert relay_hop.control_path("../x") is None
    assert relay_hop.control_path("") is None


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs OpenSSH's client")
def test_a_socket_in_the_directory_is_not_a_master_of_this_node(tmpdir_: Path) -> None:
    # issue 19, W3/C4: where /tmp is shared, the directory holds other nodes' masters of the same round
    relay_hop.control_path("round1")  # creates the directory
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(own_directory(tmpdir_) / ("round1-" + "0" * 40)))
        listener.listen()
        assert not relay_hop.has_master(["ssh"], "node2", "round1")
    finally:
        listener.close()
