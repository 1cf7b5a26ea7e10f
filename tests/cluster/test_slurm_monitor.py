"""`clusterkit monitor` over a real Slurm (tests/cluster/slurm.py) on nodes whose sshd is stopped, as on
clusters that keep users off their nodes (pam_slurm_adopt): every node streams through its own srun step
beside a job step that holds all of the job's CPUs (the monitor's steps share them, they never wait), a
node whose stream dies goes stale then DOWN on the screen, and the recording replays."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cluster.clusterkit_run import REPO
from tests.cluster.conftest import slurm_on
from tests.cluster.harness import Cluster
from tests.cluster.node import Node
from tests.cluster.slurm import SlurmCluster

# 2400: the machine-wide cluster lock may be held by another run for a while before the cluster starts.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

#: The sampler on a node, as the monitor runs it (``$TMPDIR/clusterkit-<uid>/agent-<digest> stream``).
AGENT = shlex.quote("agent-[0-9a-f]+ stream")
#: Eight recorded H100s per node: each sample is a line of over 2 KB, more than srun passes in one piece.
GPUS = REPO / "tests" / "fixtures" / "synthetic-8xh100-nvlink" / "nvml-readings.json"
#: A job step holding the job's CPU on every node, its processes ranks as a launcher would make them.
TRAINING = ("srun --ntasks-per-node=1 --job-name=training /bin/sh -c "
            "'export RANK=$SLURM_PROCID LOCAL_RANK=0; exec sleep 600' & training=$!\n"
            "until squeue -h -s -j $SLURM_JOB_ID -o %j | grep -q training; do sleep 0.2; done; sleep 1\n")
MONITOR = f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m clusterkit monitor"
SESSION = "ckslurm"


def stop_sshd(node: Node) -> None:
    node.run("kill $(cat /etc/ssh/sshd.pid)", user="root", check=True)
    deadline = time.monotonic() + 10
    while node.sshd_listening(timeout=0.5):
        assert time.monotonic() < deadline, f"sshd on {node.name} still answers"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def slurm(cluster: Cluster) -> Iterator[SlurmCluster]:
    with slurm_on(cluster) as started:
        yield started


@pytest.fixture
def no_sshd(slurm: SlurmCluster) -> Iterator[SlurmCluster]:
    """Slurm healed and idle, every node's sshd stopped (started again after the test)."""
    slurm.heal()
    for node in slurm.cluster.nodes:
        stop_sshd(node)
    yield slurm
    for node in slurm.cluster.nodes:
        node.restart_sshd()


def agents(node: Node) -> list[str]:
    return node.run(f"pgrep -u ckuser -f {AGENT}").stdout.split()


def wait_until(condition: Callable[[], bool], timeout: float, explain: Callable[[], str] = lambda: "") -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout:g}s:\n{explain()}")
        time.sleep(0.2)
    return time.monotonic() - started


def test_once_json_inside_an_allocation_reports_every_node_and_rank_through_srun(no_sshd: SlurmCluster) -> None:
    cluster = no_sshd.cluster
    head = cluster.nodes[0]
    script = (f"{TRAINING}"
              f"export CLUSTERKIT_NVML_REPLAY={shlex.quote(str(GPUS))}; started=$(date +%s%N); {MONITOR} --once --json "
              "--interval 0.5 > ~/once.json; "
              "echo \"@@monitor exit $? in $(( ($(date +%s%N) - started) / 1000000 )) ms\"\n"
              "squeue -h -s -j $SLURM_JOB_ID -o '@@step %j'\n"
              "kill $training; wait")
    ran = no_sshd.salloc(head, script, "-N3", timeout=300)
    print(ran.stdout[-2000:], ran.stderr[-2000:])  # shown with pytest -rP
    assert "@@monitor exit " in ran.stdout, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert re.search(r"@@monitor exit [01] ", ran.stdout), ran.stderr[-3000:]
    assert "training" in re.findall(r"@@step (\S+)", ran.stdout), ran.stdout  # the job's step ran all along
    doc: dict[str, Any] = json.loads(head.read_file("/home/ckuser/once.json", user="ckuser"))
    assert doc["live"] is True
    nodes = {n["host"]: n for n in doc["nodes"]}
    assert list(nodes) == ["node1", "node2", "node3"]
    for node in nodes.values():
        assert node["status"] == "up", node
        assert node["cpu_pct"] is not None, node  # two samples came (a rate needs both)
        assert node["gpus_up"] == 8 and len(node["gpus"]) == 8, node  # 2 KB lines came through whole
    assert sorted((r["rank"], r["host"]) for r in doc["ranks"]) == [(0, "node1"), (1, "node2"), (2, "node3")]
    assert "over SSH" not in ran.stderr and "ssh" not in json.dumps(doc["alerts"]).lower()
    for node in cluster.nodes:  # each sampler ended with its step
        wait_until(lambda node=node: not agents(node), 10, lambda node=node: node.run("ps -eo pid,args").stdout)
    assert not no_sshd.host_run(["squeue", "-h"]).stdout.strip()  # the allocation is released


def pane(head: Node) -> str:
    return head.run(f"tmux capture-pane -p -t {SESSION}").stdout


def node_status(screen: str, name: str) -> str | None:
    match = re.search(rf"^\s*{name}\S*\s+(\S+)", screen, re.MULTILINE)
    return match.group(1) if match else None


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/test installs it)")
def test_a_dead_stream_goes_stale_then_down_on_the_screen_and_the_recording_replays(no_sshd: SlurmCluster) -> None:
    cluster = no_sshd.cluster
    head, _, node3 = cluster.nodes
    monitor = f"{TRAINING}{MONITOR} --interval 0.5 --record ~/slurm.rec"
    command = f"salloc --quiet -N3 /bin/bash -c {shlex.quote(monitor)}"
    head.run("rm -f ~/slurm.rec", check=True)
    head.run(f"tmux new-session -d -s {SESSION} -x 200 -y 50 {shlex.quote(command)}", check=True,
             env=no_sshd.client_env())
    away = ""
    try:
        wait_until(lambda: all(node_status(pane(head), n) == "up" for n in cluster.names), 120, lambda: pane(head))
        screen = pane(head)
        assert "3/3 nodes up" in screen and "slurm job" in screen, screen
        # node3's sampler stops answering (SIGSTOP), and its agent is moved away so the reconnects fail too.
        sampler = agents(node3)
        assert len(sampler) == 1, node3.run("ps -eo pid,args").stdout
        node3.run(f"kill -STOP {sampler[0]}", check=True)
        took = wait_until(lambda: node_status(pane(head), "node3") == "stale", 10, lambda: pane(head))
        print(f"node3's sampler stopped: stale on screen after {took:.1f}s")
        agent_dir = node3.run("ls -d /tmp/clusterkit-*/agent-*[0-9a-f]", check=True).stdout.split()[0]
        away = agent_dir + ".away"
        node3.run(f"mv {agent_dir} {away}", check=True)
        took = wait_until(lambda: node_status(pane(head), "node3") == "DOWN", 20, lambda: pane(head))
        print(f"then DOWN after {took:.1f}s more")
        # Its reconnects fail, each saying what srun said (the node's own words through srun's stderr).
        took = wait_until(lambda: head.run("grep -q 'no clusterkit agent at' ~/slurm.rec").rc == 0, 30,
                          lambda: head.run("tail -5 ~/slurm.rec").stdout)
        print(f"a reconnect failed with srun's words after {took:.1f}s more")
        assert node_status(pane(head), "node1") == node_status(pane(head), "node2") == "up"
        head.run(f"tmux send-keys -t {SESSION} q", check=True)
        wait_until(lambda: head.run(f"tmux has-session -t {SESSION}").rc != 0, 30, lambda: pane(head))
    finally:
        head.run(f"tmux kill-session -t {SESSION}")
        if away:
            node3.run(f"mv {away} {away.removesuffix('.away')}")
    # The stopped sampler was killed with its step, the others ended with theirs; the job is gone.
    for node in cluster.nodes:
        wait_until(lambda node=node: not agents(node), 10, lambda node=node: node.run("ps -eo pid,args").stdout)
    wait_until(lambda: not no_sshd.host_run(["squeue", "-h"]).stdout.strip(), 30)

    records = [json.loads(line) for line in head.read_file("/home/ckuser/slurm.rec", user="ckuser").splitlines()]
    links = [r["status"] for r in records if r["k"] == "link" and r["h"] == "node3"]
    assert links.index("stale") < links.index("lost", links.index("stale")), links
    replayed = head.run(f"{MONITOR} --replay ~/slurm.rec --once --json")
    assert replayed.rc == 1, replayed.stderr  # a node is down at the recording's end
    doc = json.loads(replayed.stdout)
    assert doc["live"] is False
    assert {n["host"]: n["status"] for n in doc["nodes"]} == {"node1": "up", "node2": "up", "node3": "down"}
    assert "no clusterkit agent at" in next(n["why"] for n in doc["nodes"] if n["host"] == "node3")
    assert sorted(r["host"] for r in doc["ranks"]) == ["node1", "node2", "node3"]
