"""`clusterkit env push` where nodes share directories: /home and /tmp are one directory each, mounted by
every node and by the head, as an NFS home and a shared scratch would be.

The head (sh1) is a login node outside the hostfile (sh2-sh4). The nodes log in to each other with one
key in the one shared ~/.ssh (made here, not by bootstrap: one home needs one key). Each test names
the item of the field-test issue it guards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.clusterkit_run import clusterkit
from tests.cluster.conftest import launch_or_skip
from tests.cluster.harness import Cluster, Node
from tests.cluster.node import CommandResult
from tests.cluster.packed_env import PREFIX, install_and_pack, make_env_parents

SHARED_PREFIX = "/home/ckuser/envs/ckshared"  # on the shared home; short enough for the binary placeholders
STAGING = "/tmp/ckstage"  # on the shared /tmp


@pytest.fixture(scope="module")
def shared() -> Iterator[Cluster]:
    cluster = launch_or_skip(4, "sh", shared_home=True, shared_tmp=True)
    try:
        make_env_parents(cluster)
        one_key_for_all(cluster)
        yield cluster
    finally:
        cluster.stop()


def one_key_for_all(cluster: Cluster) -> None:
    """The user's key, authorized, and every node's host key known: in the one home every node mounts."""
    head = cluster.nodes[0]
    head.run("mkdir -p -m 700 ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519 && "
             "cat ~/.ssh/id_ed25519.pub >> ~/.ssh/authorized_keys && chmod 600 ~/.ssh/authorized_keys", check=True)
    known = "".join(f"{node.name},{node.ip} {node.host_public_key()}\n" for node in cluster.nodes)
    head.put_file("/home/ckuser/.ssh/known_hosts", known, mode=0o600)
    head.put_file("/home/ckuser/hostfile", cluster.hostfile_text(nodes=cluster.nodes[1:]))


@pytest.fixture(scope="module")
def private_env(shared: Cluster) -> tuple[str, dict[str, object]]:
    """The conda env in the head's private /opt/envs, packed into the shared home."""
    return install_and_pack(shared, shared.nodes[0])


@pytest.fixture(scope="module")
def shared_env(shared: Cluster) -> tuple[str, dict[str, object]]:
    """The conda env in the shared home (every node sees it at the same path), packed there by the head."""
    shared.nodes[0].run(f"mkdir -p {Path(SHARED_PREFIX).parent}", check=True)  # the user's own directory
    return install_and_pack(shared, shared.nodes[0], SHARED_PREFIX)


def push(head: Node, archive: str, extra: str = "") -> CommandResult:
    return clusterkit(head, f"env push ~/hostfile {archive} --connect-timeout 3 --stall-timeout 20 --json {extra}",
                      timeout=400)


def outcomes(result: CommandResult) -> dict[str, dict[str, object]]:
    assert result.stdout.strip().startswith("{"), result.stdout[-2000:] + result.stderr[-3000:]
    parsed: dict[str, dict[str, object]] = json.loads(result.stdout)
    return parsed


def statuses(result: CommandResult) -> dict[str, object]:
    return {host: outcome["status"] for host, outcome in outcomes(result).items()}


def actions(result: CommandResult, host: str) -> str:
    return " ".join(str(a) for a in outcomes(result)[host]["actions"])  # type: ignore[union-attr]


def test_tmp_is_one_directory_for_every_node_but_the_harness_keeps_its_own(shared: Cluster) -> None:
    first, second = shared.nodes[:2]
    first.run("echo from-sh1 > /tmp/seen-by-all", check=True)
    assert second.run("cat /tmp/seen-by-all", check=True).stdout == "from-sh1\n"
    (first.harness / "only-sh1").write_text("x")
    assert second.run("test -e /tmp/.ckt-harness/only-sh1", user="root").rc == 1
    first.run("rm /tmp/seen-by-all", check=True)


def test_a_staging_directory_every_node_shares_gets_the_archive_once_and_every_node_unpacks_it(
        shared: Cluster, private_env: tuple[str, dict[str, object]]) -> None:
    # issue 19, W3: the hops all wrote one .partial in the shared --staging; every node failed for 3 rounds
    head = shared.nodes[0]
    result = push(head, private_env[0], f"--staging {STAGING}")
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert statuses(result) == {"sh2": "installed", "sh3": "installed", "sh4": "installed"}
    assert "archive there (" in actions(result, "sh2")
    for host in ("sh2", "sh3", "sh4"):  # no hop tripped over another's copy ("round 1: Broken pipe")
        assert "round 1:" not in actions(result, host), actions(result, host)
    for host in ("sh3", "sh4"):
        assert f"{STAGING} is shared with sh2: the archive was sent there once" in actions(result, host)
        assert "verified: python" in actions(result, host)
    assert "broadcast 16.1 MB to 1 node(s)" in result.stderr, result.stderr[-2000:]
    for node in shared.nodes[1:]:  # each in its own /opt
        assert node.run(f"{PREFIX}/bin/ckdemo", check=True).stdout.startswith(f"ckdemo 1.0 python {PREFIX}/bin/")
    assert not list(Path(shared.nodes[0].host_path(STAGING)).glob("*.partial*"))
    # no node's relay left an OpenSSH master behind in the one /tmp
    assert not head.run("pgrep -u ckuser -f 'ControlMaste[r]=yes'").stdout.strip()


def test_a_push_to_one_node_that_sees_the_heads_own_env_leaves_it_alone(
        shared: Cluster, shared_env: tuple[str, dict[str, object]]) -> None:
    # issue 19, W3: the "never replaced by its copy" guard compared hostnames; the head's env was replaced
    head, sh2 = shared.nodes[0], shared.nodes[1]
    inode = head.run(f"stat -c %i {SHARED_PREFIX}", check=True).stdout
    head.put_file(f"{SHARED_PREFIX}/users-notes.txt", "mine\n")
    head.put_file("/home/ckuser/hostfile-sh2", shared.hostfile_text(nodes=[sh2]))
    result = clusterkit(head, f"env push ~/hostfile-sh2 {shared_env[0]} --connect-timeout 3 --json", timeout=400)
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert statuses(result) == {"sh2": "up to date"}
    assert "is the env the archive was packed from" in actions(result, "sh2")
    assert "this node sees the head's" in actions(result, "sh2")
    assert head.run(f"stat -c %i {SHARED_PREFIX}", check=True).stdout == inode
    assert head.read_file(f"{SHARED_PREFIX}/users-notes.txt") == "mine\n"


def test_nodes_sharing_the_prefixs_directory_are_grouped_alike_every_time_and_it_is_installed_once(
        shared: Cluster, shared_env: tuple[str, dict[str, object]]) -> None:
    # issue 19, W3: five dry runs grouped the nodes three ways (each node's marker step deleted its marker
    # while others still listed them)
    head = shared.nodes[0]
    head.run(f"rm -rf {SHARED_PREFIX}", check=True)  # the archive is all that is left of it
    looks = [push(head, shared_env[0], "--dry-run") for _ in range(5)]
    for looked in looks:
        assert looked.rc == 0, looked.stdout[-2000:] + looked.stderr[-3000:]
        assert statuses(looked) == {"sh2": "would install", "sh3": "shared", "sh4": "shared"}
    assert not shared.nodes[1].host_path(SHARED_PREFIX).exists()
    assert not list(shared.nodes[1].host_path("/home/ckuser/envs").glob(".clusterkit-shared-*"))
    result = push(head, shared_env[0])
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert statuses(result) == {"sh2": "installed", "sh3": "shared", "sh4": "shared"}
    assert "unpack to /home/ckuser/envs/ckshared on 1 node(s)" in result.stderr
    for host in ("sh3", "sh4"):
        assert "is shared with sh2: installed once, through it" in actions(result, host)
        assert "verified: python" in actions(result, host)
    again = push(head, shared_env[0])
    assert statuses(again) == {"sh2": "up to date", "sh3": "shared", "sh4": "shared"}, again.stderr[-2000:]
    # installed from the archive: not the directory it was packed from, though it may have that one's inode
    assert not any("packed from" in action for action in actions(again, "sh2")), actions(again, "sh2")
