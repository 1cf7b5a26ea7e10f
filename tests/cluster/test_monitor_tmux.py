"""`clusterkit monitor` in a real terminal (tmux) on the namespace cluster while DeepSpeed trains with gloo.

The head is node1: it bootstraps the cluster, starts zero_smoke.py through DeepSpeed's pdsh launcher,
and runs the monitor in a tmux session; the test reads the screen with ``tmux capture-pane``. Then one
node's agent is killed and another node is frozen: each shows as down within a few intervals and
comes back.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.cluster.clusterkit_run import REPO, bootstrap
from tests.cluster.harness import Cluster
from tests.cluster.node import Node

SESSION = "ckmon"
SMOKE = "clusterkit/workloads/scripts/zero_smoke.py"

# The module's setup bootstraps the cluster and starts training (minutes) inside the one test's time.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800), pytest.mark.skipif(shutil.which("tmux") is None,
                                                   reason="tmux is not installed (scripts/test installs it)")]


@pytest.fixture(scope="module")
def training(cluster: Cluster) -> Iterator[Cluster]:
    """A bootstrapped cluster running a long gloo ZeRO job from node1 through DeepSpeed's launcher."""
    python = cluster.install_python_env(prebuilt_ops=True)
    cluster.heal()
    cluster.reset_homes()
    result = bootstrap(cluster, python)
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    head = cluster.nodes[0]
    deepspeed = python.rsplit("/", 1)[0] + "/deepspeed"
    # `cd X; cmd > log 2>&1 &`, not `cd X && cmd ... &`: a backgrounded list would keep run()'s pipe open.
    head.run(f"cd {shlex.quote(str(REPO))} || exit 1; nohup {deepspeed} --hostfile ~/hostfile --launcher pdsh "
             f"{SMOKE} --steps 1000000 --stage 2 > ~/train.log 2>&1 < /dev/null &", check=True)
    wait_until(lambda: "zero smoke: step 2 " in head.run("cat ~/train.log").stdout, 600,
               lambda: head.run("tail -20 ~/train.log").stdout)
    yield cluster
    cluster.reset_homes()


def wait_until(condition: Callable[[], bool], timeout: float, explain: Callable[[], str] = lambda: "") -> float:
    """Seconds it took for ``condition`` to hold; fails with ``explain()`` after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout:g}s:\n{explain()}")
        time.sleep(0.2)
    return time.monotonic() - started


def pane(head: Node) -> str:
    return head.run(f"tmux capture-pane -p -t {SESSION}").stdout


def keys(head: Node, *names: str) -> None:
    for name in names:  # one at a time: escape followed by a key would read as alt+key
        head.run(f"tmux send-keys -t {SESSION} {shlex.quote(name)}", check=True)
        time.sleep(0.3)


def node_status(screen: str, name: str) -> str | None:
    match = re.search(rf"^\s*{name}\S*\s+(\S+)", screen, re.MULTILINE)
    return match.group(1) if match else None


def test_the_monitor_shows_every_node_and_rank_and_a_killed_agent_or_frozen_node_goes_down_and_comes_back(
        training: Cluster) -> None:
    head, node2, node3 = training.nodes
    monitor = (f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m clusterkit monitor ~/hostfile "
               "--interval 1 --connect-timeout 3 --record ~/monitor.jsonl --log ~/train.log")
    head.run(f"tmux new-session -d -s {SESSION} -x 200 -y 50 {shlex.quote(monitor)}", check=True)
    try:
        wait_until(lambda: all(node_status(pane(head), n) == "up" for n in training.names) and
                   "3 ranks" in pane(head), 90, lambda: pane(head))
        screen = pane(head)
        assert "3/3 nodes up" in screen
        assert re.search(r"job: step \d+, loss [\d.e-]+, [\d.e-]+ s/step", screen), screen  # from the launcher's log
        for name in training.names:
            assert re.search(rf"^\s*{name}\s+up\s.*\s1\s+\d+s\s*$", screen, re.MULTILINE), screen  # 1 rank each

        keys(head, "j")
        wait_until(lambda: "3 ranks in 1 job(s)" in pane(head), 10, lambda: pane(head))
        jobs = pane(head)
        for rank, name in enumerate(training.names):
            assert re.search(rf"^\s*{rank}\s+0/3\s+{name}\s+\d+\s+-\s+-\s+\S+\s+\S+\s+\S\s+running\s", jobs,
                             re.MULTILINE), jobs
        keys(head, "Escape")

        # Kill node2's agent: its channel ends, the node shows DOWN, the head reconnects and ships it again.
        agents = node2.run("pgrep -u ckuser -f 'agent-[0-9a-f]+ stream'").stdout.split()
        assert agents, node2.run("ps -eo pid,args").stdout
        node2.run(f"kill -9 {' '.join(agents)}", check=True)
        took = wait_until(lambda: node_status(pane(head), "node2") in ("DOWN", "stale"), 5, lambda: pane(head))
        print(f"node2's agent killed: down on screen after {took:.1f}s")
        took = wait_until(lambda: node_status(pane(head), "node2") == "up", 30, lambda: pane(head))
        print(f"node2 up again after {took:.1f}s")

        # Freeze node3 (sshd and agent stopped): stale after 3 intervals, then DOWN; it comes back on thaw.
        node3.freeze()
        try:
            took = wait_until(lambda: node_status(pane(head), "node3") in ("DOWN", "stale"), 6, lambda: pane(head))
            print(f"node3 frozen: stale on screen after {took:.1f}s")
            wait_until(lambda: node_status(pane(head), "node3") == "DOWN", 20, lambda: pane(head))
            assert re.search(r"node3: down: .*\(last sample \d+s ago\)", pane(head)), pane(head)
            assert node_status(pane(head), "node1") == "up"  # one frozen node never freezes the view
        finally:
            node3.thaw()
        took = wait_until(lambda: node_status(pane(head), "node3") == "up", 60, lambda: pane(head))
        print(f"node3 thawed: up again after {took:.1f}s")
        keys(head, "q")
        wait_until(lambda: head.run(f"tmux has-session -t {SESSION}").rc != 0, 10, lambda: pane(head))
        recording = head.run("grep -c '\"k\":\"sample\"' ~/monitor.jsonl").stdout.strip()
        assert int(recording or 0) > 20
        keep = os.environ.get("CLUSTERKIT_KEEP_MONITOR_RECORDING")
        if keep:  # to refresh tests/fixtures/monitor/cluster-3node-gloo.jsonl
            shutil.copy(head.host_path("/home/ckuser/monitor.jsonl"), keep)
    finally:
        head.run(f"tmux kill-session -t {SESSION}")
