"""The Slurm harness itself: real slurmctld, slurmd and munge on namespace nodes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.cluster.conftest import slurm_on
from tests.cluster.harness import Cluster
from tests.cluster.slurm import SLURMD_TIMEOUT_S, SlurmCluster


@pytest.fixture(scope="module")
def slurm(cluster: Cluster) -> Iterator[SlurmCluster]:
    with slurm_on(cluster) as started:
        yield started


def test_one_srun_step_runs_a_task_on_every_node_as_the_user(slurm: SlurmCluster) -> None:
    node1 = slurm.cluster.nodes[0]
    done = node1.run("srun -N3 --ntasks-per-node=1 --label sh -c 'echo $(hostname) $SLURMD_NODENAME $(id -un)'",
                     check=True)
    lines = sorted(line.split(":", 1)[1].split() for line in done.stdout.splitlines())
    assert lines == [[n, n, Cluster.user] for n in ("node1", "node2", "node3")]


def test_sbcast_writes_into_each_nodes_private_tmp(slurm: SlurmCluster) -> None:
    node1 = slurm.cluster.nodes[0]
    script = ("echo payload > /tmp/src.txt && sbcast --force /tmp/src.txt /tmp/copied.txt && "
              "srun --ntasks-per-node=1 sh -c 'echo $(hostname) $(cat /tmp/copied.txt)'")
    done = slurm.salloc(node1, script, "-N3")
    assert done.rc == 0, done.stderr
    assert sorted(done.stdout.split("\n")[:3]) == ["node1 payload", "node2 payload", "node3 payload"]
    for node in slurm.cluster.nodes:
        assert node.host_path("/tmp/copied.txt").read_text() == "payload\n"


def test_a_drained_node_says_why_and_a_killed_slurmd_goes_down(slurm: SlurmCluster) -> None:
    node2, node3 = slurm.cluster.nodes[1:]
    try:
        slurm.drain(node2, "ckt planted: bad DIMM")
        reasons = slurm.host_run(["sinfo", "-R", "-h", "-o", "%E|%N"]).stdout
        assert "ckt planted: bad DIMM|node2" in reasons
        slurm.stop_slurmd(node3)
        deadline = time.monotonic() + SLURMD_TIMEOUT_S + 30
        while slurm.states()["node3"] not in ("down*", "down"):
            assert time.monotonic() < deadline, slurm.states()
            time.sleep(0.5)
    finally:
        slurm.heal()
    assert set(slurm.states().values()) == {"idle"}
