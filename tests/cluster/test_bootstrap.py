"""`clusterkit bootstrap` takes bare namespace nodes to a cluster DeepSpeed's launcher runs on (test_launch runs it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.cluster.clusterkit_run import bootstrap, doctor_json, failures, home_files
from tests.cluster.harness import Cluster
from tests.cluster.node import CommandResult


@pytest.fixture(scope="module")
def training_python(cluster: Cluster) -> str:
    return cluster.install_python_env()


@pytest.fixture(scope="module")
def bootstrapped(cluster: Cluster, training_python: str) -> CommandResult:
    """The module's cluster, bootstrapped once from bare homes (no keys, no known_hosts)."""
    cluster.heal()
    cluster.reset_homes()
    return bootstrap(cluster, training_python)


def test_bootstrap_from_bare_nodes_succeeds(bootstrapped: CommandResult) -> None:
    assert bootstrapped.rc == 0, bootstrapped.stdout[-3000:] + bootstrapped.stderr[-3000:]
    assert "ready" in bootstrapped.stdout


def test_trusted_host_keys_are_recorded_with_their_fingerprints(cluster: Cluster, bootstrapped: CommandResult) -> None:
    log = cluster.nodes[0].read_file("/home/ckuser/.clusterkit/trusted-host-keys.log")
    for node in cluster.nodes:
        assert any(f" trusted {node.name} ssh-ed25519 SHA256:" in line for line in log.splitlines()), log


def test_every_node_logs_into_every_node_without_a_password(cluster: Cluster, bootstrapped: CommandResult) -> None:
    for source in cluster.nodes:
        for target in cluster.names:
            result = source.run(f"ssh -o BatchMode=yes -o StrictHostKeyChecking=yes {target} hostname", timeout=30)
            assert (result.rc, result.stdout.strip()) == (0, target), result.stderr


def test_keys_and_files_on_nodes_have_safe_modes(cluster: Cluster, bootstrapped: CommandResult) -> None:
    for node in cluster.nodes:
        modes = node.run("stat -c '%a %n' ~/.ssh ~/.ssh/id_ed25519 ~/.ssh/authorized_keys ~/.ssh/known_hosts",
                         check=True).stdout.split("\n")
        assert [m.split()[0] for m in modes if m] == ["700", "600", "600", "600"], modes


def test_deepspeed_env_names_the_env_and_the_shared_interface(cluster: Cluster, bootstrapped: CommandResult,
                                                              training_python: str) -> None:
    text = cluster.nodes[1].read_file("/home/ckuser/.deepspeed_env")
    values = dict(line.split("=", 1) for line in text.splitlines())
    assert values["PATH"].startswith(training_python.rsplit("/", 1)[0] + ":")
    assert values["NCCL_SOCKET_IFNAME"] == "eth0"
    assert values["NCCL_IB_DISABLE"] == "1"  # no InfiniBand on any node


# DeepSpeed's own pdsh launcher running a ZeRO step on a cluster bootstrapped from bare homes is
# test_launch.py's printed-line test (the same `deepspeed --hostfile` line, run as printed).


def test_a_rerun_changes_nothing(cluster: Cluster, bootstrapped: CommandResult, training_python: str) -> None:
    before = {node.name: home_files(node) for node in cluster.nodes}
    again = bootstrap(cluster, training_python, password=False)
    assert again.rc == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "changed" not in again.stdout
    assert {node.name: home_files(node) for node in cluster.nodes} == before


def test_doctor_finds_no_errors_on_the_bootstrapped_cluster(cluster: Cluster, bootstrapped: CommandResult,
                                                            training_python: str) -> None:
    report = doctor_json(cluster, training_python)
    errors = [f for f in report["findings"] if f["outcome"] == "fail" and f["severity"] == "error"]
    assert errors == []
    assert not failures(report, "ssh-mesh-broken")
    assert report["hosts"] == cluster.names


def test_dry_run_on_bare_nodes_changes_nothing_and_lists_the_actions(
        start_cluster: Callable[..., Cluster]) -> None:
    fresh = start_cluster(2, "dry")
    python = fresh.install_python_env()
    before = {node.name: home_files(node) for node in fresh.nodes}
    result = bootstrap(fresh, python, "--dry-run")
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "would trust ssh-ed25519" in result.stderr
    assert "would create" in result.stderr
    assert "dry run: nothing was changed" in result.stdout
    assert {node.name: home_files(node) for node in fresh.nodes} == before
