"""``clusterkit stacks`` against real jobs on the namespace cluster: torch.distributed over gloo, started by
``clusterkit launch`` (DeepSpeed's launcher over pdsh, or srun under Slurm), one rank per node, one fault
planted per job (tests/cluster/scripts/stuck_job.py). Each fault is named from the head, with its rank and
node, within two dumps; a healthy job is never flagged.

The SSH jobs run side by side (each on its own master port; ``--job`` picks one), so the module pays for
their start once.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.clusterkit_run import REPO, bootstrapped_from_bare_homes, clusterkit
from tests.cluster.conftest import slurm_on
from tests.cluster.harness import Cluster
from tests.cluster.node import CommandResult, Node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

JOB = "tests/cluster/scripts/stuck_job.py"
#: fault -> (its master port, the culprit's rank: rank r runs on node r+1).
FAULTS = {"none": (29610, 1), "sleep": (29611, 2), "skip": (29612, 1), "dataloader": (29613, 2),
          "lock": (29614, 1), "straggler": (29615, 2), "frozen": (29616, 2)}
LIFETIME_S = 400


@pytest.fixture(scope="module")
def training_python(cluster: Cluster) -> str:
    return cluster.install_python_env()


@pytest.fixture(scope="module")
def bootstrapped(cluster: Cluster, training_python: str) -> Cluster:
    return bootstrapped_from_bare_homes(cluster, training_python)


def launch_command(python: str, fault: str, port: int, culprit: int, flags: str = "") -> str:
    """``clusterkit launch`` of the job with ``fault``, detached, its output in ``~/job-FAULT.log``."""
    fault_args = "none" if fault == "frozen" else fault  # frozen: a healthy job whose node the test stops
    return (f"cd {shlex.quote(str(REPO))} || exit 1; nohup {shlex.quote(sys.executable)} -m clusterkit launch {flags} "
            f"--python {python} --no-preflight --master-port {port} -- {JOB} --fault {fault_args} "
            f"--culprit {culprit} --lifetime {LIFETIME_S} --tag {fault} > ~/job-{fault}.log 2>&1 < /dev/null &")


def wait_for(node: Node, logs: list[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        missing = [log for log in logs if node.run(f"grep -q 'ready at step' {log}").rc != 0]
        if not missing:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not ready within {timeout:g}s: " + " ".join(
                f"{log}: {node.run(f'tail -5 {log}').stdout}" for log in missing))
        time.sleep(1)


def end_jobs(cluster: Cluster) -> None:
    for node in cluster.nodes:  # each node is a PID namespace of its own: only the test's jobs match
        node.run(f"pkill -CONT -f {JOB}; pkill -KILL -f {JOB}")


@pytest.fixture(scope="class")
def jobs(bootstrapped: Cluster, training_python: str) -> Iterator[Cluster]:
    """Every fault's job running on the three nodes, node3's ranks of the ``frozen`` job SIGSTOPped."""
    head = bootstrapped.nodes[0]
    head.put_file("/home/ckuser/hostfile", bootstrapped.hostfile_text())
    try:
        for fault, (port, culprit) in FAULTS.items():
            head.run(launch_command(training_python, fault, port, culprit, "~/hostfile --connect-timeout 3"),
                     check=True)
        wait_for(head, [f"~/job-{fault}.log" for fault in FAULTS])
        bootstrapped.nodes[2].run(f"pkill -STOP -f '{JOB} .*--tag frozen'", check=True)
        time.sleep(1)  # the faults of step 3 take hold
        yield bootstrapped
    finally:
        end_jobs(bootstrapped)


def stacks(node: Node, fault: str, flags: str = "", env: dict[str, str] | None = None,
           user: str | None = None) -> tuple[CommandResult, dict[str, Any]]:
    """``clusterkit stacks ~/hostfile --job ... --json`` from ``node``; the result and its document."""
    job = f"{node.cluster.nodes[0].ip}:{FAULTS[fault][0]}"
    command = f"stacks {flags} --job {job} --json"
    if user is None:
        done = clusterkit(node, command, timeout=120, env=env)
    else:
        done = node.run(f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m clusterkit {command}",
                        user=user, timeout=120, env=env)
    assert done.rc in (0, 1), done.stdout[-2000:] + done.stderr[-3000:]
    doc: dict[str, Any] = json.loads(done.stdout)
    print(fault, done.rc, [g["text"] for g in doc["groups"]], [f["message"] for f in doc["findings"]])
    return done, doc


def failed(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["check_id"], f["host"]) for f in doc["findings"]]


def line_of(marker: str) -> int:
    """The line of the job script that carries ``marker``."""
    lines = (REPO / JOB).read_text().splitlines()
    return next(n for n, text in enumerate(lines, 1) if marker in text)


#: fault -> the one finding it must give: (check, culprit's node, words of its message).
NAMED = {
    "sleep": ("hang-elsewhere", "node3", f"rank 2 (node3, local rank 0) in `main` stuck_job.py:"
                                         f"{line_of('# fault: sleep')} `time.sleep(3600)  # fault: sleep`"),
    "skip": ("hang-desync", "node2",
             f"rank 1 (node2, local rank 0) in `barrier` (stuck_job.py:{line_of('# fault: skip')})"),
    "dataloader": ("hang-dataloader", "node3", "rank 2 (node3, local rank 0) in DataLoader `__next__` stuck_job.py:"
                                               f"{line_of('batch = next(loader)')}"),
    "lock": ("hang-lock", "node2", f"rank 1 (node2, local rank 0) waiting on a lock in `main` stuck_job.py:"
                                   f"{line_of('# fault: lock')}"),
}


class TestOverSsh:
    @pytest.mark.parametrize("fault", sorted(NAMED))
    def test_the_rank_not_where_the_others_wait_is_named_with_its_node_and_line(self, jobs: Cluster,
                                                                                fault: str) -> None:
        done, doc = stacks(jobs.nodes[0], fault, "~/hostfile --connect-timeout 3")
        check, host, says = NAMED[fault]
        assert done.rc == 1
        assert failed(doc) == [(check, host)], doc["findings"]
        assert says in doc["findings"][0]["message"]
        assert "ranks 0,2" in doc["findings"][0]["message"] or "ranks 0-1" in doc["findings"][0]["message"]
        assert doc["groups"][0]["hosts"] == [host]  # the odd one first
        ranks = [r for node in doc["dumps"][-1]["nodes"] for r in node["ranks"]]
        assert {r["method"] for r in ranks} == {"py-spy"}
        assert all(0 < r["paused_at_most_s"] < 2 for r in ranks)  # each rank stopped only while py-spy read it

    def test_a_healthy_job_is_never_flagged(self, jobs: Cluster) -> None:
        done, doc = stacks(jobs.nodes[0], "none", "~/hostfile --connect-timeout 3 --sample 2")
        assert done.rc == 0, doc["findings"]
        assert doc["moving"] is True and doc["findings"] == []

    def test_a_straggler_is_named_with_its_hottest_frames(self, jobs: Cluster) -> None:
        _, doc = stacks(jobs.nodes[0], "straggler", "~/hostfile --connect-timeout 3 --sample 3")
        assert failed(doc) == [("rank-straggler", "node3")], doc["findings"]
        message = doc["findings"][0]["message"]
        assert message.startswith("rank 2 (node3, local rank 0) is the straggler") and "`backward` stuck_job" in message

    def test_a_stopped_nodes_ranks_are_named_as_frozen(self, jobs: Cluster) -> None:
        _, doc = stacks(jobs.nodes[0], "frozen", "~/hostfile --connect-timeout 3")
        assert failed(doc) == [("rank-stopped", "node3")], doc["findings"]
        assert "every rank on node3 (rank 2 (node3, local rank 0)) is stopped (state T): the node is frozen" \
            in doc["findings"][0]["message"]
        assert "scontrol update nodename=node3 state=drain" in doc["findings"][0]["fix"]

    def test_the_launch_hook_gives_the_same_answer_without_py_spy(self, jobs: Cluster) -> None:
        _, doc = stacks(jobs.nodes[0], "lock", "~/hostfile --connect-timeout 3 --via signal")
        assert failed(doc) == [("hang-lock", "node2")], doc["findings"]
        ranks = [r for node in doc["dumps"][-1]["nodes"] for r in node["ranks"]]
        assert {r["method"] for r in ranks} == {"signal"}

    def test_py_spy_refused_says_why_and_falls_back_to_the_hook(self, jobs: Cluster) -> None:
        """py-spy run as another user (nobody) cannot read the ranks: as under Yama's ptrace_scope=1, which
        this kernel lacks. Root on node3 reads its rank through the hook instead."""
        node3 = jobs.nodes[2]
        real = shlex.quote(str(Path(sys.executable).parent / "py-spy"))
        node3.put_file("/opt/pyspy-as-nobody", "#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups "
                       f"{real} \"$@\"\n", mode=0o755, user="root")
        _, doc = stacks(node3, "sleep", "--dumps 1", env={"CLUSTERKIT_PY_SPY": "/opt/pyspy-as-nobody"}, user="root")
        refused = [f for f in doc["findings"] if f["check_id"] == "stacks-ptrace-denied"]
        assert len(refused) == 1 and "read instead through the stack hook" in refused[0]["message"], doc["findings"]
        assert "kernel.yama.ptrace_scope=0" in refused[0]["fix"]
        rank = doc["dumps"][-1]["nodes"][0]["ranks"][0]
        assert rank["method"] == "signal" and "Permission Denied" in rank["fallback_from"]
        assert doc["groups"][0]["text"].startswith("rank 2 (")


    def test_a_node_that_does_not_answer_is_named_and_the_rest_shown(self, jobs: Cluster) -> None:
        """Last: node3 frozen whole (sshd too); its ranks and the job are left stopped for the teardown."""
        node3 = jobs.nodes[2]
        node3.freeze()
        try:
            started = time.monotonic()
            done, doc = stacks(jobs.nodes[0], "sleep", "~/hostfile --connect-timeout 3 --dumps 1 --timeout 2")
            took = time.monotonic() - started
        finally:
            node3.thaw()
        print(f"with node3 frozen: {took:.1f}s")
        assert done.rc == 1 and took < 60
        assert failed(doc) == [("stacks-node-silent", "node3")], doc["findings"]
        assert [g["text"] for g in doc["groups"]] == ["ranks 0-1 (node[1-2]) in `all_reduce` (stuck_job.py:"
                                                      f"{line_of('dist.all_reduce(grads)')})"]
        assert {r["method"] for node in doc["dumps"][-1]["nodes"] for r in node["ranks"]} == {"py-spy"}


def test_under_slurm_the_culprit_is_named_through_srun(cluster: Cluster, training_python: str) -> None:
    with slurm_on(cluster) as slurm:
        slurm.heal()
        head = cluster.nodes[0]
        script = (launch_command(training_python, "dataloader", 29620, 2) + "\n"
                  "for i in $(seq 240); do grep -q 'ready at step' ~/job-dataloader.log && break; sleep 1; done\n"
                  f"sleep 2; cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m clusterkit stacks --json "
                  f"--job {head.ip}:29620 > ~/stacks-slurm.json; echo \"@@stacks exit $?\"\n")
        try:
            ran = slurm.salloc(head, script, "-N3", timeout=400)
        finally:
            end_jobs(cluster)
        assert "@@stacks exit" in ran.stdout, ran.stdout[-3000:] + ran.stderr[-3000:]
        doc = json.loads(head.read_file("/home/ckuser/stacks-slurm.json"))
        print([g["text"] for g in doc["groups"]], [f["message"] for f in doc["findings"]],
              [(r["rank"], r["method"], r["error"]) for n in doc["dumps"][-1]["nodes"] for r in n["ranks"]])
        assert "@@stacks exit 1" in ran.stdout
        assert failed(doc) == [("hang-dataloader", "node3")], doc["findings"]
        assert doc["findings"][0]["message"].startswith("rank 2 (node3, local rank 0) in DataLoader `__next__`")
