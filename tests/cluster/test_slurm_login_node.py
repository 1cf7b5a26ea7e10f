"""``--slurm`` from outside an allocation, as from a login node, on a Slurm whose config is not at the default
path: every node keeps it in /opt/slurm/etc and users find it only through ``SLURM_CONF`` (issue 19's field
test). clusterkit asks salloc for the nodes in the user's environment."""

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
    assert doctor.rc in (0, 1), doctor.stdout[-2000:] + doctor.stderr[-3000:]
    report = json.loads(doctor.stdout)
    assert report["hosts"] == ["node1", "node2", "node3"]
    assert "surveying over Slurm" in doctor.stderr
    printed = from_login_shell(healthy, "launch --slurm --nodes 3 --print-only --no-preflight -- train.py --steps 2")
    assert printed.rc == 0, printed.stderr[-3000:]
    words = shlex.split(printed.stdout.strip().splitlines()[-1])
    assert words[0] == "srun" and "--nodelist=node[1-3]" in words
    assert words[-3:] == ["train.py", "--steps", "2"]
    assert jobs(healthy) == ""  # both allocations released
