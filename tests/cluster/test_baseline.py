"""What changed since the run marked good, on the real 3-node cluster: one thing changed at a time (a
``.deepspeed_env`` line on one node, torch's version on another, one node's link shaped) is named on
exactly that node; an unchanged cluster compared twice reports nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster import pyenv
from tests.cluster.clusterkit_run import bootstrapped_from_bare_homes, clusterkit
from tests.cluster.harness import Cluster
from tests.cluster.workloads_env import bench_json

pytestmark = [pytest.mark.timeout(1200)]
#: The findings a comparison gives (clusterkit.core.change_report).
COMPARED = {"changed-software", "changed-hardware", "counter-grew", "figure-fell", "hosts-changed"}
DSENV = "/home/ckuser/.deepspeed_env"


@pytest.fixture(scope="module")
def training_python(cluster: Cluster) -> str:
    return cluster.install_python_env(prebuilt_ops=True)


@pytest.fixture(scope="module")
def bootstrapped(cluster: Cluster, training_python: str) -> Cluster:
    return bootstrapped_from_bare_homes(cluster, training_python)


def doctor(cluster: Cluster, python: str, flags: str) -> dict[str, Any]:
    result = clusterkit(cluster.nodes[0], f"doctor ~/hostfile --json --python {python} --no-probes {flags}",
                        timeout=180)
    assert result.rc in (0, 1), result.stderr[-3000:]
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def changes(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(f["check"], f["host"], f["where"]) for f in doc["findings"]
            if f["check"] in COMPARED and f["outcome"] == "fail"]


def test_doctor_names_each_change_on_the_node_that_has_it(bootstrapped: Cluster, training_python: str) -> None:
    node3 = bootstrapped.nodes[2]
    # a spare link on node3 (a veth pair: this kernel has no dummy interfaces), up when the good run is taken
    node3.run("ip link add ckv0 type veth peer name ckv1 && ip link set ckv0 up && ip link set ckv1 up", user="root",
              check=True)
    try:
        doctor(bootstrapped, training_python, "--name good")
        assert changes(doctor(bootstrapped, training_python, "--compare")) == []
        assert changes(doctor(bootstrapped, training_python, "--compare --no-save-run")) == []

        node3.run("ip link set ckv0 down", user="root", check=True)  # an interface taken down; its peer loses carrier
        doc = doctor(bootstrapped, training_python, "--compare good --no-save-run")
        found = changes(doc)  # its state, the speed it no longer reports, and its peer's carrier
        assert ("changed-hardware", "node3", "NIC ckv0 state") in found, found
        assert {(check, host) for check, host, _ in found} == {("changed-hardware", "node3")}, found
        node3.run("ip link set ckv0 up", user="root", check=True)
        _one_change_at_a_time(bootstrapped, training_python)
    finally:
        node3.run("ip link del ckv0", user="root")


def _one_change_at_a_time(bootstrapped: Cluster, training_python: str) -> None:
    _, node2, node3 = bootstrapped.nodes

    original = node2.run(f"cat {DSENV}").stdout
    key = next((line.partition("=")[0] for line in original.splitlines() if "=" in line), "NCCL_DEBUG")
    edited = [f"{key}=edited-by-test" if line.startswith(f"{key}=") else line for line in original.splitlines()]
    node2.put_file(DSENV, "\n".join(edited if key in original else [*edited, f"{key}=edited-by-test"]) + "\n")
    try:
        doc = doctor(bootstrapped, training_python, "--compare good --no-save-run")
    finally:
        node2.put_file(DSENV, original)
    assert changes(doc) == [("changed-software", "node2", f"{DSENV} {key}")]
    (finding,) = (f for f in doc["findings"] if f["check"] == "changed-software")
    assert finding["message"].endswith("-> edited-by-test; node[1,3]: unchanged")

    node3.plant_torch_version("2.0.0+planted")
    try:
        doc = doctor(bootstrapped, training_python, "--compare good --no-save-run --fresh")
    finally:
        pyenv.remove_planted_torch(node3)
    found = changes(doc)
    assert ("changed-software", "node3", "torch") in found, found
    assert {host for _, host, _ in found} == {"node3"}, found


def test_a_shaped_link_is_a_figure_that_fell_on_that_node(bootstrapped: Cluster, training_python: str) -> None:
    head, node2, _ = bootstrapped.nodes
    # A deadline far past a pair's 10-20 s here: on a loaded machine a pair that ran out of time has no
    # figure, and a comparison of runs without figures compares nothing.
    search = "find-slow ~/hostfile --size 1M --pair-iters 3 --pair-deadline 240"
    result, good = bench_json(head, training_python, f"{search} --name good")
    # Its verdicts are find-slow's own tests' business (a pair read on a cold start can look slow on two
    # shared cores); here the run only has to be measured and saved.
    assert result.rc in (0, 1) and "run saved as good" in result.stderr, result.stderr[-3000:]
    pairs = [pair for round_ in good["slow_node_search"]["rounds"] for pair in round_]
    assert all(pair["busbw_gbs"] for pair in pairs), pairs
    node2.shape("40mbit")
    try:
        result, doc = bench_json(head, training_python, f"{search} --compare --no-save-run")
    finally:
        node2.unshape()
    fell = [f for f in doc["findings"] if f["check"] == "figure-fell"]
    assert [(f["host"], f["where"]) for f in fell] == [("node2", "all_reduce busbw of the pair")], doc["findings"]
    assert "node[1-2]" in fell[0]["message"]
