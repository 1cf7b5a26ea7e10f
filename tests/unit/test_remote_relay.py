"""The relay hop on this machine: each "host" is a private mount namespace in which the copy's directory
is that host's own directory, and the transport between hops is ``unshare`` in place of ``ssh``.

The hop (relay_hop.py) is the real one, started exactly as on nodes; only the transport differs (SSH
is exercised in tests/cluster/test_envpack.py). Needs root for mount namespaces; skipped otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from clusterkit.cluster.remote import SshSettings
from clusterkit.cluster.remote.transfer import MARKER, RelayOptions, RemoteFile, hop_command, relay

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare for private mount namespaces")

TRANSPORT = 'test "$1" = dead && {{ echo "ssh: connect to host dead port 22: No route to host" >&2; exit 255; }}; ' \
            'mount --bind {root}/"$1" {target} && exec bash -c "$2"'


class Hosts:
    """Per-host directories under ``root``; each host sees its own at ``target``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.target = root / "target"
        self.target.mkdir()
        self.transport = ("unshare", "-m", "bash", "-c", TRANSPORT.format(root=root, target=self.target),
                          "local-ssh")

    def dir(self, host: str) -> Path:
        path = self.root / host
        path.mkdir(exist_ok=True)
        return path

    def relay(self, source: Path, chain: list[str], offset: int = 0) -> list[dict[str, Any]]:
        """Stream ``source`` from ``offset`` into ``chain``'s first hop; the events every hop reported."""
        for host in chain:
            self.dir(host)
        data = source.read_bytes()
        spec = {"op": "hop", "label": chain[0], "path": str(self.target / "file.bin"), "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "offset": offset, "next": chain[1:],
                "ssh": list(self.transport), "stall_s": 10, "python": "python3"}
        done = subprocess.run([*self.transport, chain[0], hop_command("python3", spec)], input=data[offset:],
                              capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        return [json.loads(line[len(MARKER):]) for line in done.stdout.decode().splitlines()
                if line.startswith(MARKER)]


    def head_relay(self, source: Path, chain: list[str], head_ssh: tuple[str, ...]) -> dict[str, Any]:
        """The head's side (``transfer.relay``) streaming through ``head_ssh``; per host, its result."""
        for host in chain:
            self.dir(host)
        data = source.read_bytes()
        remote = RemoteFile(str(self.target / "file.bin"), len(data), hashlib.sha256(data).hexdigest())
        options = RelayOptions(hop_ssh=self.transport, head_ssh=head_ssh, stall_s=10, warm_links=False)
        return relay(source, remote, chain, SshSettings(connect_timeout_s=2), options)


def finals(events: list[dict[str, Any]]) -> dict[str, str]:
    return {e["host"]: e["ev"] for e in events if e["ev"] in ("done", "failed", "lost")}


def error_of(events: list[dict[str, Any]], host: str) -> str:
    return next(str(e["error"]) for e in events if e["host"] == host and e["ev"] in ("failed", "lost"))


@pytest.fixture
def hosts(tmp_path: Path) -> Hosts:
    return Hosts(tmp_path)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source.bin"
    path.write_bytes(os.urandom(3_000_000))
    return path


def test_every_hop_keeps_a_verified_copy_while_forwarding(hosts: Hosts, source: Path) -> None:
    events = hosts.relay(source, ["n1", "n2", "n3"])
    assert finals(events) == {"n1": "done", "n2": "done", "n3": "done"}
    for host in ("n1", "n2", "n3"):
        assert (hosts.dir(host) / "file.bin").read_bytes() == source.read_bytes()
        assert not list(hosts.dir(host).glob("file.bin.partial*"))


def test_the_chain_is_ready_from_its_last_hop_back_to_its_first_before_any_data_moves(hosts: Hosts,
                                                                                     source: Path) -> None:
    events = hosts.relay(source, ["n1", "n2", "n3"])
    kinds = [(e["ev"], e["host"]) for e in events]
    readies = [host for kind, host in kinds if kind == "ready"]
    assert readies == ["n3", "n2", "n1"]
    first_progress = next(i for i, (kind, _) in enumerate(kinds) if kind == "progress")
    assert kinds.index(("ready", "n1")) < first_progress


def test_the_head_streams_to_the_first_hop_through_its_own_ssh_client(hosts: Hosts, source: Path) -> None:
    results = hosts.head_relay(source, ["n1", "n2", "n3"], head_ssh=hosts.transport)
    assert {host: result.ok for host, result in results.items()} == {"n1": True, "n2": True, "n3": True}
    for host in ("n1", "n2", "n3"):
        assert (hosts.dir(host) / "file.bin").read_bytes() == source.read_bytes()


def test_a_head_ssh_client_that_cannot_log_in_leaves_the_stream_to_paramiko(hosts: Hosts, source: Path) -> None:
    # `false` stands for an ssh that exits before the first hop says a word (no key, unknown host key):
    # paramiko then tries, and its words (here: no such host) are what the user reads.
    results = hosts.head_relay(source, ["n1"], head_ssh=("false",))
    assert not results["n1"].ok
    assert str(results["n1"].error).startswith("lost n1 while sending: "), results["n1"].error


def test_a_first_hop_lost_mid_stream_is_reported_with_sshs_words(hosts: Hosts, source: Path) -> None:
    # An ssh that logged in, took half a megabyte, then lost its connection.
    dropped = ("bash", "-c", f"echo '{MARKER}{{\"ev\": \"start\", \"host\": \"n1\"}}'; "
               f"echo '{MARKER}{{\"ev\": \"ready\", \"host\": \"n1\"}}'; head -c 500000 > /dev/null; "
               "echo 'Connection to n1 closed by remote host.' >&2; exit 255", "ssh")
    results = hosts.head_relay(source, ["n1", "n2"], head_ssh=dropped)
    assert results["n1"].error == "lost n1 while sending: Connection to n1 closed by remote host."
    assert results["n2"].error == "no result: cut off behind a lost node"


def test_a_partial_copy_is_resumed_from_where_it_stopped(hosts: Hosts, source: Path) -> None:
    (hosts.dir("n2") / "file.bin.partial").write_bytes(source.read_bytes()[:1_000_000])
    events = hosts.relay(source, ["n2"], offset=1_000_000)
    assert finals(events) == {"n2": "done"}
    assert {"ev": "start", "have": 1_000_000, "host": "n2", "pos": 1_000_000} in events
    assert (hosts.dir("n2") / "file.bin").read_bytes() == source.read_bytes()


def test_a_damaged_partial_copy_fails_its_checksum_and_is_deleted(hosts: Hosts, source: Path) -> None:
    (hosts.dir("n2") / "file.bin.partial").write_bytes(os.urandom(1_000_000))
    events = hosts.relay(source, ["n1", "n2", "n3"])
    assert finals(events) == {"n1": "done", "n2": "failed", "n3": "done"}
    assert error_of(events, "n2").startswith("checksum mismatch on n2: got sha256 ")
    assert not (hosts.dir("n2") / "file.bin").exists() and not (hosts.dir("n2") / "file.bin.partial").exists()


def test_a_full_disk_on_one_hop_is_named_and_the_hops_behind_it_still_get_the_file(hosts: Hosts,
                                                                                  source: Path) -> None:
    small = hosts.dir("n2")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        events = hosts.relay(source, ["n1", "n2", "n3"])
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert finals(events) == {"n1": "done", "n2": "failed", "n3": "done"}
    assert error_of(events, "n2") == (f"no space left on n2: {hosts.target} has 1.0 MB free, the copy needs "
                                      "3.0 MB more (3.0 MB in all)")
    assert (hosts.dir("n3") / "file.bin").read_bytes() == source.read_bytes()


def test_an_unreachable_next_hop_is_reported_lost_with_sshs_words(hosts: Hosts, source: Path) -> None:
    events = hosts.relay(source, ["n1", "dead", "n3"])
    assert finals(events) == {"n1": "done", "dead": "lost"}
    assert {"ev": "ready", "host": "n1"} in events  # a successor that never comes does not hold the chain
    assert error_of(events, "dead") == "ssh: connect to host dead port 22: No route to host"
    assert (hosts.dir("n1") / "file.bin").read_bytes() == source.read_bytes()

