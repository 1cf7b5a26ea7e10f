"""`clusterkit launch` on a bootstrapped namespace cluster: the line it prints really launches there,
and a preflight error stops it before DeepSpeed starts."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from tests.cluster.clusterkit_run import REPO, bootstrapped_from_bare_homes, clusterkit
from tests.cluster.harness import Cluster
from tests.cluster.node import CommandResult

SMOKE = "clusterkit/workloads/scripts/zero_smoke.py"
CONFIGS = "tests/fixtures/launch"


@pytest.fixture(scope="module")
def training_python(cluster: Cluster) -> str:
    return cluster.install_python_env(prebuilt_ops=True)


@pytest.fixture(scope="module")
def bootstrapped(cluster: Cluster, training_python: str) -> Cluster:
    return bootstrapped_from_bare_homes(cluster, training_python)


def launch(cluster: Cluster, python: str, args: str, timeout: float = 300) -> CommandResult:
    """``clusterkit launch ~/hostfile --python PYTHON ARGS`` from node1, in the repo (the same path on every node)."""
    return clusterkit(cluster.nodes[0], f"launch ~/hostfile --python {python} --connect-timeout 3 {args}",
                      timeout=timeout)


@pytest.mark.slow
def test_the_printed_line_really_launches_a_zero_step_on_every_node(bootstrapped: Cluster,
                                                                    training_python: str) -> None:
    printed = launch(bootstrapped, training_python, f"--print-only -- {SMOKE} --steps 2 --stage 2")
    assert printed.rc == 0, printed.stderr[-3000:]
    line = printed.stdout.strip()
    words = shlex.split(line)
    node1_address = bootstrapped.nodes[0].ip
    assert words[:3] == [training_python.rsplit("/", 1)[0] + "/deepspeed", "--hostfile", "/home/ckuser/hostfile"]
    assert words[words.index("--master_addr") + 1] == node1_address
    assert words[words.index("--master_port") + 1] == "29500"
    assert words[words.index(SMOKE):] == [SMOKE, "--steps", "2", "--stage", "2"]

    ran = bootstrapped.nodes[0].run(f"cd {shlex.quote(str(REPO))} && {line}", timeout=300)
    assert ran.rc == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "world size 3" in ran.stdout
    assert "ZERO SMOKE OK" in ran.stdout


@pytest.mark.slow
def test_launch_checks_the_config_then_runs_the_job_with_it(bootstrapped: Cluster, training_python: str) -> None:
    result = launch(bootstrapped, training_python,
                    f"--deepspeed-config {CONFIGS}/zero3_cpu_3ranks.json -- {SMOKE} --steps 1")
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "0 errors," in result.stderr
    assert f"--deepspeed_config {CONFIGS}/zero3_cpu_3ranks.json" in result.stderr  # the line it ran
    assert "stage 3, micro batch 2, world size 3" in result.stdout
    assert "ZERO SMOKE OK" in result.stdout


def test_a_config_that_cannot_run_on_this_cluster_stops_the_launch(bootstrapped: Cluster,
                                                                   training_python: str) -> None:
    result = launch(bootstrapped, training_python,
                    f"--print-only -- {SMOKE} --deepspeed_config {CONFIGS}/batch_mismatch_3ranks.json")
    assert result.rc == 1
    assert "batch-arithmetic" in result.stderr
    assert "set train_batch_size to 6" in result.stderr
    assert "not launching" in result.stderr
    assert result.stdout == ""


def test_a_node_without_the_interpreter_stops_the_launch(bootstrapped: Cluster, training_python: str) -> None:
    node3 = bootstrapped.nodes[2]
    node3.remove_python_env()
    try:
        result = launch(bootstrapped, training_python, f"--print-only -- {SMOKE}")
        assert result.rc == 1
        assert "[node3] interpreter-missing" in result.stderr
        assert "not launching" in result.stderr
        assert result.stdout == ""
    finally:
        bootstrapped.install_python_env(prebuilt_ops=True)


def test_a_busy_master_port_is_traded_for_a_free_one(bootstrapped: Cluster, training_python: str) -> None:
    node1 = bootstrapped.nodes[0]
    hold_port = ("import socket, time; s = socket.socket(); "
                 "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('', 29500)); s.listen(); "
                 "print('held', flush=True); time.sleep(120)")
    holder = node1.run(f"nohup python3 -c {shlex.quote(hold_port)} > held.log 2>&1 & echo $!", check=True)
    try:
        node1.run("for i in $(seq 50); do grep -q held held.log && exit 0; sleep 0.1; done; cat held.log; exit 1",
                  check=True)
        result = launch(bootstrapped, training_python, f"--print-only -- {SMOKE}")
        assert result.rc == 0, result.stderr[-3000:]
        words = shlex.split(result.stdout)
        assert words[words.index("--master_port") + 1] != "29500"
        assert "master-unreachable" not in result.stderr
    finally:
        node1.run(f"kill {holder.stdout.strip()}; cat held.log")


DESYNC = "tests/fixtures/flightrec/desync_job.py"


@pytest.mark.slow
def test_a_rank_that_skips_an_all_reduce_is_named_by_the_flight_recorder_across_nodes(
        bootstrapped: Cluster, training_python: str) -> None:
    """The flight recorder clusterkit launch turns on, read from every node while the job hangs over SSH:
    rank 1 (node2) left out one all_reduce, so ranks 0 and 2 wait in their 5th, which it never calls."""
    node1 = bootstrapped.nodes[0]
    started = node1.run(f"cd {shlex.quote(str(REPO))} && nohup {shlex.quote(sys.executable)} -m clusterkit launch "
                        f"~/hostfile --python {training_python} --connect-timeout 3 -- {DESYNC} --hold 25 "
                        "> ~/flightrec-launch.log 2>&1 & echo $!", check=True)
    try:
        node1.run(f"for i in $(seq 900); do grep -q holding ~/flightrec-launch.log && exit 0; "
                  f"kill -0 {started.stdout.strip()} || break; sleep 0.1; done; tail -30 ~/flightrec-launch.log; "
                  "exit 1", timeout=120, check=True)
        read = clusterkit(node1, "flightrec ~/hostfile --connect-timeout 3 --json", timeout=60)
        assert read.rc == 1, read.stderr[-3000:]  # a desync found
        doc = json.loads(read.stdout)
        assert [(r["rank"], r["host"]) for r in doc["ranks"]] == [(0, "node1"), (1, "node2"), (2, "node3")]
        found = doc["disagreement"]
        assert (found["seq"], found["op"], found["input_sizes"], found["missing_ranks"]) == \
            (5, "gloo:all_reduce", [[1000]], [1])
        assert doc["findings"][0]["id"] == "collective-desync"
        assert "never by rank(s) 1 (on node2)" in doc["findings"][0]["message"]
        launched = node1.run("cat ~/flightrec-launch.log").stdout
        assert "flight recorder: job " in launched
    finally:
        node1.run(f"kill {started.stdout.strip()} 2>/dev/null; for i in $(seq 400); do "
                  f"kill -0 {started.stdout.strip()} 2>/dev/null || exit 0; sleep 0.1; done", timeout=60)
