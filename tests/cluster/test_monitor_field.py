"""Field test 2 (issue 19) regressions of the monitor and of a workload's rank reports, on a cluster
built as the field test's: the launching machine is a login node outside the hostfile (node1; the
hostfile names node2 and node3), homes are private per node, and everything runs as a non-root user.
Each test names the item it guards.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cluster.clusterkit_run import REPO, bootstrap, clusterkit
from tests.cluster.conftest import launch_or_skip
from tests.cluster.harness import Cluster, Node
from tests.cluster.node import CommandResult
from tests.cluster.workloads_env import bench_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

#: The sampler on a node, as shipped by the monitor (``$TMPDIR/clusterkit-<uid>/agent-<digest>``).
AGENT = shlex.quote("agent-[0-9a-f]+ stream")
PROGRESS_LOG = "tests/cluster/scripts/progress_log.py"


@dataclass
class Site:
    cluster: Cluster
    python: str
    login: Node
    workers: list[Node]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """Three nodes; node1 is the login node, outside the hostfile; bootstrapped once from node1."""
    cluster = launch_or_skip(3)
    try:
        python = cluster.install_python_env(prebuilt_ops=True)
        login, *workers = cluster.nodes
        done = bootstrap(cluster, python, head=login, hostfile=cluster.hostfile_text(nodes=workers))
        assert done.rc == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield Site(cluster, python, login, workers)
    finally:
        cluster.stop()


def wait_until(condition: Callable[[], bool], timeout: float, explain: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g}s: {explain()}")
        time.sleep(0.3)


def agents(node: Node) -> list[str]:
    return node.run(f"pgrep -u ckuser -f {AGENT}").stdout.split()


def monitor(node: Node, args: str, timeout: float = 120) -> CommandResult:
    return clusterkit(node, f"monitor ~/hostfile --connect-timeout 3 {args}", timeout=timeout)


def in_background(node: Node, command: str, log: str) -> str:
    """Start ``command`` in the node, detached, its output to ``log``; its pid in the node."""
    started = node.run(f"cd {shlex.quote(str(REPO))} || exit 1; nohup {command} > {log} 2>&1 < /dev/null & echo $!",
                       check=True)
    return started.stdout.strip()


def test_an_interval_out_of_range_is_a_usage_error_and_starts_no_agent(site: Site) -> None:
    """issue 19, C2: `--interval inf|nan` was accepted (the agents crashed and the nodes showed down), and
    `--once --interval 1e9` never returned."""
    for interval in ("inf", "nan", "1e9"):
        refused = monitor(site.login, f"--once --interval {interval}")
        assert refused.rc == 2 and "must be 0.1 to 60 seconds" in refused.stderr, refused.stderr
    assert [agents(node) for node in site.workers] == [[], []]


def test_no_agent_outlives_a_monitor_killed_in_the_middle_of_a_long_interval(site: Site) -> None:
    """issue 19, C2: agents of a monitor that had gone were still running on the nodes 53 minutes later;
    an agent must end when its channel does, whatever the interval."""
    head = in_background(site.login, f"{shlex.quote(sys.executable)} -m clusterkit monitor ~/hostfile --once "
                                     "--interval 60 --wait 300 --connect-timeout 3", "~/monitor-killed.out")
    wait_until(lambda: all(agents(node) for node in site.workers), 60,
               lambda: site.login.run("cat ~/monitor-killed.out").stdout)
    time.sleep(2)  # each agent has sent its first sample and waits 60 s for the next
    site.login.run(f"kill -9 {head}", check=True)
    wait_until(lambda: not any(agents(node) for node in site.workers), 15,
               lambda: "agents left: " + str({n.name: agents(n) for n in site.workers}))


def test_a_recording_the_user_cannot_write_is_a_usage_error(site: Site) -> None:
    """issue 19, C1: `monitor --record /root/x.rec` as a user without access was an internal error (exit 3)."""
    refused = monitor(site.login, "--once --record /root/x.rec")
    assert refused.rc == 2, refused.stderr
    assert "/root/x.rec: cannot write the recording: Permission denied" in refused.stderr
    assert "Traceback" not in refused.stderr and "internal error" not in refused.stderr
    assert [agents(node) for node in site.workers] == [[], []]


def once_json(node: Node, args: str) -> dict[str, Any]:
    done = monitor(node, f"--once --json {args}")
    assert done.rc in (0, 1), done.stderr[-3000:]
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def test_a_live_runs_step_time_is_its_real_pace_and_a_replay_of_its_recording_shows_it(site: Site) -> None:
    """issue 19, M1: `monitor --log` on a live run said `0 s/step` against a real ~1 s/step; a nonexistent
    --log printed `job: no step yet` with no error; --record did not save the progress."""
    login = site.login
    job = in_background(login, f"{shlex.quote(site.python)} -u {PROGRESS_LOG}", "~/train.log")
    try:
        wait_until(lambda: "step=4," in login.run("cat ~/train.log").stdout, 180,
                   lambda: login.run("tail -5 ~/train.log").stdout)
        doc = once_json(login, "--interval 0.5 --log ~/train.log --record ~/monitor.rec")
    finally:
        login.run(f"kill {job}")
    assert {n["host"]: n["status"] for n in doc["nodes"]} == {"node2": "up", "node3": "up"}
    progress = doc["progress"]
    assert progress["step"] >= 4 and progress["loss"] is not None
    assert 0.9 <= progress["step_time_s"] <= 1.5, progress  # the job sleeps 1 s a step
    assert progress["step_time_from"] == "timestamps"  # DeepSpeed's logger stamps its step lines
    replayed = clusterkit(login, "monitor --replay ~/monitor.rec --once --json")
    assert replayed.rc in (0, 1), replayed.stderr[-3000:]
    assert json.loads(replayed.stdout)["progress"] == progress

    missing = monitor(login, "--once --log ~/no-such.log")
    assert missing.rc == 2
    assert "--log: cannot read /home/ckuser/no-such.log: No such file or directory" in missing.stderr


def test_a_recording_cut_mid_line_is_played_up_to_the_cut(site: Site) -> None:
    """issue 19, C3: a recording cut mid-line, as when its session dies, could not be replayed at all."""
    login = site.login
    made = monitor(login, "--once --interval 0.5 --record ~/cut.rec")
    assert made.rc == 0, made.stderr[-3000:]
    lines = login.read_file("/home/ckuser/cut.rec").splitlines()
    login.run("truncate -s -25 ~/cut.rec", check=True)  # the last line loses its end
    replayed = clusterkit(login, "monitor --replay ~/cut.rec --once --json")
    assert replayed.rc == 0, replayed.stderr[-3000:]
    doc = json.loads(replayed.stdout)
    assert {n["host"]: n["status"] for n in doc["nodes"]} == {"node2": "up", "node3": "up"}
    assert doc["notice"] == (f"/home/ckuser/cut.rec:{len(lines)}: the recording ends in the middle of this line "
                             f"(its writer stopped mid-line): played up to line {len(lines) - 1}")


def test_a_run_past_its_deadline_says_when_each_rank_was_last_heard_never_a_state_it_has_not_seen(
        site: Site) -> None:
    """issue 19, M2: with a node's link saturated, a rank was shown as `starting` while its peer was
    inside the same all_reduce."""
    node3 = site.workers[1]
    node3.shape("40mbit")
    try:
        # 200 all_reduces of 16 MiB at 40 Mbit/s take minutes: after a ~6 s launch both ranks are inside
        # them long before a 30 s deadline.
        result, doc = bench_json(site.login, site.python, "collectives ~/hostfile --ops all_reduce --sizes 16M "
                                                          "--iters 200 --no-expect --deadline 30", timeout=300)
    finally:
        node3.unshape()
    assert result.rc == 1, result.stderr[-4000:]
    deadline = [f for f in doc["findings"] if f["check"] == "workload-deadline"]
    assert len(deadline) == 1, [(f["check"], f["message"]) for f in doc["findings"]]
    message = deadline[0]["message"]
    unfinished = re.findall(r"rank (\d) on (node\d): ([^;]+)", message)
    assert sorted(rank for rank, _, _ in unfinished) == ["0", "1"], message
    for _, _, said in unfinished:
        assert re.fullmatch(r"last heard \d+s before the end, (its last progress '[^']+' at \d+s|no progress "
                            r"reported)|nothing heard from it in \d+s", said.strip()), message
    # The live view, as a log shows it: the node's final state with what was last heard of its rank.
    assert re.search(r"node3: timed out \(ranks \[1\] not done; rank 1: (last heard|nothing heard)",
                     " ".join(result.stderr.split())), result.stderr[-3000:]
