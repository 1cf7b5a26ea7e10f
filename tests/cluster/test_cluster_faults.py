"""Faults on real nodes: doctor finds planted ones, and dead, frozen or re-keyed nodes never hang a run."""

from __future__ import annotations

import threading
import time

import pytest

from tests.cluster.clusterkit_run import bootstrap, doctor_json, failures, home_files
from tests.cluster.harness import Cluster
from tests.cluster.node import CommandResult


@pytest.fixture(scope="module")
def training_python(cluster: Cluster) -> str:
    return cluster.install_python_env()


@pytest.fixture
def bootstrapped(clean_cluster: Cluster, training_python: str) -> Cluster:
    result = bootstrap(clean_cluster, training_python)
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return clean_cluster


def test_doctor_finds_each_planted_fault_on_the_node_that_has_it(bootstrapped: Cluster, training_python: str) -> None:
    node1, node2, node3 = bootstrapped.nodes
    node2.hide_binary("/usr/bin/pdsh")
    node3.plant_torch_version("2.0.0")
    try:
        node1.run("sed -i 's/^NCCL_SOCKET_IFNAME=.*/NCCL_SOCKET_IFNAME=ib0/' ~/.deepspeed_env", check=True)
        node2.run("sed -i '/clusterkit@node3/d' ~/.ssh/authorized_keys", check=True)
        report = doctor_json(bootstrapped, training_python)
        trust = failures(report, "ssh-trust-incomplete")
        assert [(f["host"], f["message"]) for f in trust] == [
            ("node3", "node3's keys are not in ~/.ssh/authorized_keys on node2")]
        # pdsh runs only where jobs are launched from (node1 here): a worker without it is fine.
        assert failures(report, "pdsh-missing") == []
        torch = [f for f in failures(report, "software-versions-differ") if "torch differs" in f["message"]]
        assert [f["host"] for f in torch] == ["node3"]
        assert "2.0.0 on node3" in torch[0]["message"]
        assert {f["host"] for f in failures(report, "nccl-socket-ifname-unmatched")} == {"node1", "node2", "node3"}
        assert "NCCL_SOCKET_IFNAME=ib0" in failures(report, "nccl-socket-ifname-unmatched")[0]["message"]

        node2.remove_python_env()
        report = doctor_json(bootstrapped, training_python)
        missing = failures(report, "interpreter-missing")
        assert [f["host"] for f in missing] == ["node2"]
        assert training_python in missing[0]["message"]
        assert report["summary"]["ok"] is False
    finally:
        bootstrapped.heal()
        bootstrapped.install_python_env()


def test_a_frozen_node_is_reported_within_the_timeout_and_the_others_in_full(
        bootstrapped: Cluster, training_python: str) -> None:
    node3 = bootstrapped.nodes[2]
    node3.freeze()
    try:
        started = time.monotonic()
        report = doctor_json(bootstrapped, training_python, "--timeout 10 --connect-timeout 3", timeout=120)
        elapsed = time.monotonic() - started
    finally:
        node3.thaw()
    assert elapsed < 60, f"doctor took {elapsed:.0f}s with a frozen node"
    assert "did not answer" in report["facts"]["node3"]["unavailable"]
    assert [f["host"] for f in failures(report, "node-unreachable")] == ["node3"]
    for name in ("node1", "node2"):
        facts = report["facts"][name]
        assert facts["host"]["hostname"] == name
        assert "unavailable" not in facts["python_env"]
        assert facts["python_env"]["torch_version"].startswith("2.")


def test_a_node_killed_mid_bootstrap_is_reported_and_a_rerun_finishes(
        clean_cluster: Cluster, training_python: str) -> None:
    node3 = clean_cluster.nodes[2]
    result: dict[str, CommandResult] = {}
    run = threading.Thread(target=lambda: result.setdefault("first", bootstrap(clean_cluster, training_python)))
    run.start()
    deadline = time.monotonic() + 120
    while not node3.host_path("/home/ckuser/.ssh/authorized_keys").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    node3.kill()
    run.join(300)
    first = result["first"]
    assert first.rc == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "node3: " in first.stdout and "FAILED" in first.stdout.split("node3: ", 1)[1].splitlines()[0]
    assert "EOFError" not in first.stdout + first.stderr  # a lost connection is said in words
    for node in clean_cluster.nodes[:2]:  # the others finished every step
        assert "NCCL_SOCKET_IFNAME=" in node.read_file("/home/ckuser/.deepspeed_env")

    node3.boot()
    second = bootstrap(clean_cluster, training_python)
    assert second.rc == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "NCCL_SOCKET_IFNAME=" in node3.read_file("/home/ckuser/.deepspeed_env")


def test_a_changed_host_key_stops_the_run_with_the_fix(bootstrapped: Cluster, training_python: str) -> None:
    node2 = bootstrapped.nodes[1]
    before = {node.name: home_files(node) for node in bootstrapped.nodes}
    node2.regenerate_host_keys()
    result = bootstrap(bootstrapped, training_python, password=False)
    assert result.rc == 1
    said = " ".join(result.stderr.split())
    assert "host key of node2 CHANGED" in said
    assert "ABORTED" in said
    assert "ssh-keygen -R node2 and rerun with --trust-new-hosts" in said
    assert {node.name: home_files(node) for node in bootstrapped.nodes} == before
