"""``--slurm`` from outside an allocation, as from a login node, on a Slurm whose config is not at the default
path: every node keeps it in /opt/slurm/etc and users find it only through ``SLURM_CONF`` (issue 19's field
test). clusterkit asks salloc for the nodes, and says at once when Slurm cannot grant them now."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator

import pytest

from tests.cluster.clusterkit_run import REPO
from tests.cluster.conftest import slurm_on
from tests.cluster.harness import Cluster
from tests.cluster.node import CommandResult
from tests.cluster.slurm import SlurmCluster

CONF_DIR = "/opt/slurm/etc"
SMOKE = "clusterkit/workloads/scripts/zero_smoke.py"


@pytest.fixture(scope="module")
def slurm(cluster: Cluster) -> Iterator[SlurmCluster]:
    with slurm_on(cluster, conf_dir=CONF_DIR) as started:
        yield started


@pytest.fixture
def healthy(slurm: SlurmCluster) -> SlurmCluster:
    slurm.heal()
    return slurm


def from_login_shell(slurm: SlurmCluster, args: str, timeout: float = 180) -> CommandResult:
    """``clusterkit ARGS`` on node1, outside any allocation, in a shell whose SLURM_CONF names the config."""
    command = f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m clusterkit {args}"
    return slurm.cluster.nodes[0].run(command, timeout=timeout, env=slurm.client_env())


def jobs(slurm: SlurmCluster) -> str:
    return slurm.host_run(["squeue", "-h", "-o", "%i %j %T %N"]).stdout.strip()


def test_the_config_is_found_only_through_slurm_conf(healthy: SlurmCluster) -> None:
    node1 = healthy.cluster.nodes[0]
    without = node1.run("salloc --no-shell -N1 --immediate=5")
    assert without.rc != 0 and "config" in without.stderr
    assert node1.run("srun -N3 hostname", env=healthy.client_env(), check=True).stdout.split().count("node2") == 1


def test_slurm_commands_from_outside_an_allocation_keep_slurm_conf(healthy: SlurmCluster) -> None:
    # issue 19, W7: salloc ran without SLURM_CONF and failed to fetch its config (blaming drained nodes).
    doctor = from_login_shell(healthy, "doctor --slurm --nodes 3 --json --timeout 30")
    assert doctor.rc in (0, 1) and doctor.stdout.startswith("{"), doctor.stdout[-2000:] + doctor.stderr[-3000:]
    report = json.loads(doctor.stdout)
    assert report["hosts"] == ["node1", "node2", "node3"]
    assert "surveying over Slurm" in doctor.stderr
    printed = from_login_shell(healthy, f"launch --slurm --nodes 3 --print-only --no-preflight -- {SMOKE} --steps 2")
    assert printed.rc == 0, printed.stderr[-3000:]
    words = shlex.split(printed.stdout.strip().splitlines()[-1])
    assert words[0] == "srun" and "--nodelist=node[1-3]" in words
    assert words[-3:] == [SMOKE, "--steps", "2"]
    assert jobs(healthy) == ""  # both allocations released


def test_nodes_that_cannot_be_had_now_are_named_with_slurms_reason_at_once(healthy: SlurmCluster) -> None:
    # issue 19, W10: a drained node made `doctor --slurm --nodes 3` wait out --slurm-wait, then say
    # "Connection timed out". The command timeout here is far shorter than --slurm-wait: waiting fails it.
    healthy.drain(healthy.cluster.nodes[2], "ckt planted: ECC errors on DIMM B2")
    refused = from_login_shell(healthy, "doctor --slurm --nodes 3 --slurm-wait 600", timeout=90)
    assert refused.rc == 1, refused.stdout[-2000:] + refused.stderr[-3000:]
    said = " ".join(refused.stderr.split())
    assert "3 nodes cannot be had now in partition debug: 2 of its 3 nodes take jobs (node[1-2])" in said
    assert "node3 is IDLE+DRAIN: ckt planted: ECC errors on DIMM B2 [set by root at " in said
    assert "ask for what can be had now: --nodes 2" in said
    assert "scontrol update NodeName=node3 State=RESUME" in said
    assert "Traceback" not in refused.stderr
    named = from_login_shell(healthy, f"launch --nodelist node[2-3] --slurm-wait 600 --print-only -- {SMOKE}",
                             timeout=90)
    assert named.rc == 1, named.stdout[-2000:] + named.stderr[-3000:]
    said = " ".join(named.stderr.split())
    assert "--nodelist node[2-3] cannot be had now in partition debug" in said
    assert "ask for what can be had now: --nodelist node2 or --nodes 2 (no --nodelist)" in said
    assert jobs(healthy) == ""  # nothing was queued


def test_nodes_that_are_only_busy_are_waited_for(healthy: SlurmCluster) -> None:
    # issue 19, W10: when enough nodes take jobs but some are busy, clusterkit waits (as before) and then
    # says they were busy, not that nodes are drained.
    healthy.drain(healthy.cluster.nodes[2], "ckt planted: ECC errors on DIMM B2")
    healthy.host_run(["salloc", "--no-shell", "--exclusive", "--nodelist=node1", "--job-name=holder",
                      "--immediate=30"])
    waited = from_login_shell(healthy, "doctor --slurm --nodes 2 --slurm-wait 3", timeout=90)
    assert waited.rc == 1, waited.stdout[-2000:] + waited.stderr[-3000:]
    said = " ".join(waited.stderr.split())
    assert "got no allocation" in said and "cannot be had now" not in said
    assert "the nodes that take jobs were busy for 3s: squeue shows the jobs holding them" in said
    assert [line.split()[1] for line in jobs(healthy).splitlines()] == ["holder"]
