"""clusterkit on a real Slurm cluster (slurmctld, a slurmd per namespace node, munge): doctor through one
srun step, Slurm's own findings, a DeepSpeed ZeRO step launched with srun, env push by sbcast, workloads
launched over srun (collectives, the slow-node search, the GPU bench), and SSH outside an allocation."""

from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import pyenv
from tests.cluster.clusterkit_run import REPO, bootstrap, clusterkit, failures
from tests.cluster.conftest import slurm_on
from tests.cluster.harness import Cluster
from tests.cluster.node import CommandResult
from tests.cluster.packed_env import PREFIX, install_and_pack, make_env_parents
from tests.cluster.slurm import SlurmCluster

SMOKE = "clusterkit/workloads/scripts/zero_smoke.py"


@pytest.fixture(scope="module")
def slurm(cluster: Cluster) -> Iterator[SlurmCluster]:
    with slurm_on(cluster) as started:
        yield started


@pytest.fixture(scope="module")
def training_python(cluster: Cluster) -> str:
    return cluster.install_python_env(prebuilt_ops=True)


@pytest.fixture
def healthy(slurm: SlurmCluster, training_python: str) -> SlurmCluster:
    slurm.heal()
    return slurm


def in_allocation(slurm: SlurmCluster, args: str, salloc: str = "-N3", timeout: float = 300) -> CommandResult:
    """``salloc SALLOC clusterkit ARGS`` on node1 as the test user: clusterkit runs inside the allocation."""
    command = f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m clusterkit {args}"
    return slurm.salloc(slurm.cluster.nodes[0], command, salloc, timeout=timeout)


def report_of(result: CommandResult) -> dict[str, Any]:
    assert result.rc in (0, 1), result.stdout[-2000:] + result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def outcome(report: dict[str, Any], check: str) -> list[tuple[str, str]]:
    return [(f["host"], f["outcome"]) for f in report["findings"] if f["check"] == check]


def test_doctor_inside_an_allocation_finds_a_planted_fault_on_the_right_node(healthy: SlurmCluster,
                                                                            training_python: str) -> None:
    node2 = healthy.cluster.nodes[1]
    node2.plant_torch_version("2.0.0")
    try:
        result = in_allocation(healthy, f"doctor --json --python {training_python}")
    finally:
        pyenv.remove_planted_torch(node2)
    report = report_of(result)
    assert result.rc == 1
    assert report["hosts"] == ["node1", "node2", "node3"]
    assert [f["host"] for f in failures(report, "software-versions-differ")] == ["node2"]
    assert "2.0.0" in failures(report, "software-versions-differ")[0]["message"]
    assert failures(report, "node-unreachable") == []
    assert failures(report, "master-unreachable") == []
    # Reached through srun: SSH between nodes is not judged, Slurm's own checks are.
    assert set(outcome(report, "ssh-trust-incomplete")) == {("cluster", "skip")}
    assert ("cluster", "pass") in outcome(report, "slurm-node-unavailable")
    assert "surveying over Slurm" in result.stderr


def test_a_drained_node_is_reported_with_the_reason_the_admin_gave(healthy: SlurmCluster,
                                                                   training_python: str) -> None:
    node3 = healthy.cluster.nodes[2]
    healthy.drain(node3, "ckt planted: ECC errors on DIMM B2")
    result = clusterkit(healthy.cluster.nodes[0], f"doctor --slurm --nodes 2 --json --python {training_python}")
    report = report_of(result)
    assert report["hosts"] == ["node1", "node2"]
    drained = failures(report, "slurm-partition-nodes-unavailable")
    assert [f["host"] for f in drained] == ["node3"]
    assert "ckt planted: ECC errors on DIMM B2" in drained[0]["message"]
    assert "[set by root at " in drained[0]["message"]
    assert healthy.host_run(["squeue", "-h"]).stdout.strip() == ""  # clusterkit released its allocation


def test_a_frozen_node_is_a_finding_after_the_deadline_not_a_hang(healthy: SlurmCluster,
                                                                  training_python: str) -> None:
    node1, node3 = healthy.cluster.nodes[0], healthy.cluster.nodes[2]
    go = node1.host_path("/tmp/go")
    waiting = "while [ ! -e /tmp/go ]; do sleep 0.1; done; rm -f /tmp/go; "
    command = (f"{waiting}cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m clusterkit "
               f"doctor --json --timeout 10 --python {training_python}")
    result: list[CommandResult] = []
    runner = threading.Thread(target=lambda: result.append(healthy.salloc(node1, command, "-N3", timeout=240)))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not healthy.host_run(["squeue", "-h", "-t", "R", "-o", "%i"]).stdout.strip():
            assert time.monotonic() < deadline, "the allocation did not start"
            time.sleep(0.2)
        node3.freeze()
        started = time.monotonic()
        go.write_text("")
        runner.join(200)
        elapsed = time.monotonic() - started
    finally:
        node3.thaw()
    report = report_of(result[0])
    unreachable = failures(report, "node-unreachable")
    print(f"frozen node3 after {elapsed:.1f}s: {unreachable}")  # shown with pytest -rP
    assert [f["host"] for f in unreachable] == ["node3"]
    assert "gave no answer within" in unreachable[0]["message"] or "srun on node3" in unreachable[0]["message"]
    assert elapsed < 90
    assert failures(report, "software-versions-differ") == []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_zero_step_launched_through_srun_runs_on_every_node(healthy: SlurmCluster, training_python: str) -> None:
    ran = in_allocation(healthy, f"launch --python {training_python} -- {SMOKE} --steps 2 --stage 2", timeout=800)
    assert ran.rc == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "0 errors" in ran.stderr  # the preflight ran over srun and found nothing that stops a launch
    line = next(line for line in ran.stderr.splitlines() if line.startswith("launching: "))
    words = shlex.split(line.removeprefix("launching: "))
    assert words[0] == "srun" and words[1].startswith("--jobid=")
    assert "--nodelist=node[1-3]" in words
    assert f"--master_addr={healthy.cluster.nodes[0].ip}" in words
    assert words[words.index(SMOKE):] == [SMOKE, "--steps", "2", "--stage", "2"]
    assert "world size 3" in ran.stdout
    assert "ZERO SMOKE OK" in ran.stdout


def test_a_preflight_error_stops_a_launch_under_slurm_as_over_ssh(healthy: SlurmCluster, training_python: str) -> None:
    # One launch path over both transports: the same refusal as tests/cluster/test_launch.py's over SSH.
    stopped = in_allocation(healthy, f"launch --python {training_python} --print-only -- {SMOKE} "
                                     "--deepspeed_config tests/fixtures/launch/batch_mismatch_3ranks.json")
    assert stopped.rc == 1, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert "batch-arithmetic" in stopped.stderr and "set train_batch_size to 6" in stopped.stderr
    assert "not launching" in stopped.stderr
    assert stopped.stdout == ""


def test_deepspeeds_own_slurm_launcher_line_keeps_the_users_selection(healthy: SlurmCluster,
                                                                      training_python: str) -> None:
    printed = in_allocation(healthy, f"launch --python {training_python} --launcher slurm --include node2@node3 "
                                     f"--print-only --no-preflight -- {SMOKE} --steps 2")
    assert printed.rc == 0, printed.stdout[-3000:] + printed.stderr[-3000:]
    words = shlex.split(printed.stdout.strip().splitlines()[-1])
    assert words[0] == training_python.rsplit("/", 1)[0] + "/deepspeed"
    assert words[words.index("--launcher") + 1] == "slurm" and "--no_ssh_check" in words
    assert words[words.index("--include") + 1] == "node2@node3"
    assert words[words.index("--master_addr") + 1] == healthy.cluster.nodes[1].ip
    written = healthy.cluster.nodes[0].read_file(words[words.index("--hostfile") + 1]).splitlines()
    assert written[1:] == ["node1 slots=1", "node2 slots=1", "node3 slots=1"]
    assert words[-3:] == [SMOKE, "--steps", "2"]


def test_slurm_hostfile_writes_the_allocation_for_deepspeed(healthy: SlurmCluster) -> None:
    result = in_allocation(healthy, "slurm hostfile", salloc="-N3 --ntasks-per-node=2")
    assert result.rc == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["node1 slots=2", "node2 slots=2", "node3 slots=2"]


def test_env_push_inside_an_allocation_goes_by_sbcast_and_is_verified_on_every_node(healthy: SlurmCluster) -> None:
    cluster = healthy.cluster
    make_env_parents(cluster)
    archive, _ = install_and_pack(cluster, cluster.nodes[0])
    pushed = in_allocation(healthy, f"env push {archive} --json --timeout 300")
    assert pushed.rc == 0, pushed.stdout[-3000:] + pushed.stderr[-3000:]
    outcomes = json.loads(pushed.stdout)
    assert {host: o["status"] for host, o in outcomes.items()} == \
        {"node1": "up to date", "node2": "installed", "node3": "installed"}
    assert "sbcast" in pushed.stderr
    for host in ("node2", "node3"):
        actions = " ".join(outcomes[host]["actions"])
        assert "sbcast copy checked" in actions and "verified: python" in actions, actions
        assert "torch" in actions and "deepspeed" in actions, actions
        ran = cluster.node(host).run(f"{PREFIX}/bin/ckdemo", timeout=60)
        assert ran.stdout.startswith(f"ckdemo 1.0 python {PREFIX}/bin/python"), ran.stdout + ran.stderr


def test_a_collectives_run_inside_an_allocation_starts_through_srun(healthy: SlurmCluster,
                                                                    training_python: str) -> None:
    ran = in_allocation(healthy, f"bench collectives --python {training_python} --ops all_reduce --sizes 64K "
                                 "--iters 2 --json", timeout=400)
    assert ran.rc == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    doc = json.loads(ran.stdout)
    words = shlex.split(doc["command"])
    assert words[0] == "srun" and words[1].startswith("--jobid=") and "--label" in words
    assert "--nodelist=node[1-3]" in words
    sweep = doc["result"]
    assert sweep["world_size"] == 3 and sweep["backend"] == "gloo"
    assert sorted(sweep["hosts"]) == ["node1", "node2", "node3"]
    assert [row["size"] for row in sweep["ops"]["all_reduce"]["rows"]] == [65536]
    assert sweep["ops"]["all_reduce"]["wrong"] == 0
    assert doc["expected_busbw_gbs"] == pytest.approx(1.25)  # the nodes' facts came through srun too
    assert doc["ok"] is True


def test_the_slow_node_search_and_the_gpu_bench_inside_an_allocation_launch_through_srun(
        healthy: SlurmCluster, training_python: str) -> None:
    head = healthy.cluster.nodes[0]
    searched = in_allocation(healthy, f"bench find-slow --python {training_python} --size 256K --pair-iters 2 "
                                      "--no-expect --log /home/ckuser/find-slow.log.json --json", timeout=400)
    # Which pair is fastest on unshaped links of one shared machine is noise (a pair can fall below
    # --slow-ratio by chance); what must hold is that every pair ran and measured: no node is broken.
    assert searched.rc in (0, 1), searched.stdout[-3000:] + searched.stderr[-3000:]
    search = json.loads(searched.stdout)["slow_node_search"]
    assert set(search["verdicts"]) == {"node1", "node2", "node3"}
    assert "broken" not in search["verdicts"].values(), search["evidence"]
    assert all(pair["busbw_gbs"] for rnd in search["rounds"] for pair in rnd), search["evidence"]
    runs = json.loads(head.read_file("/home/ckuser/find-slow.log.json"))["runs"]
    assert runs and all(run["argv"][0] == "srun" and run["returncode"] == 0 for run in runs)
    assert {len(run["hosts"]) for run in runs} == {2}  # pairs, each its own srun step
    measured = in_allocation(healthy, f"bench gpu --python {training_python} --allow-cpu --iters 2 --mem-mib 8 "
                                      "--matmul-n 64 --no-expect --json", timeout=400)
    assert measured.rc in (0, 1), measured.stdout[-3000:] + measured.stderr[-3000:]
    doc = json.loads(measured.stdout)
    assert shlex.split(doc["command"])[0] == "srun"
    assert sorted({r["host"] for r in doc["readings"]}) == ["node1", "node2", "node3"]
    # doctor --workloads: in the doctor's own allocation too (no GPU here: each node's bench says so).
    report = report_of(in_allocation(healthy, f"doctor --python {training_python} --workloads gpu --json",
                                     timeout=400))
    assert sorted(outcome(report, "gpu-health")) == [("node1", "skip"), ("node2", "skip"), ("node3", "skip")]


def test_outside_an_allocation_the_same_commands_go_over_ssh(healthy: SlurmCluster, training_python: str) -> None:
    cluster = healthy.cluster
    cluster.reset_homes()
    done = bootstrap(cluster, training_python)
    assert done.rc == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = report_of(clusterkit(cluster.nodes[0], f"doctor ~/hostfile --json --python {training_python}"))
    assert report["hosts"] == ["node1", "node2", "node3"]
    assert ("cluster", "pass") in outcome(report, "ssh-trust-incomplete")
    assert set(outcome(report, "slurm-node-unavailable")) == {("cluster", "skip")}
    printed = clusterkit(cluster.nodes[0], f"launch ~/hostfile --print-only --python {training_python} -- {SMOKE}")
    assert printed.rc == 0, printed.stderr[-2000:]
    assert "--launcher pdsh" in printed.stdout
    # A HOSTFILE inside an allocation still means SSH.
    inside = in_allocation(healthy, f"doctor ~/hostfile --json --python {training_python}")
    assert ("cluster", "pass") in outcome(report_of(inside), "ssh-trust-incomplete")
