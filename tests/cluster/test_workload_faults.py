"""Planted faults make real workload runs fail; the diagnosis names the cause, the node and the fix.

Each test plants one fault on the 3-node cluster, runs ``clusterkit bench`` from node1 with ``--log``,
and diagnoses the captured run as the command does. With ``CLUSTERKIT_WRITE_FIXTURES=1`` the captured
logs are kept as ``tests/fixtures/workload-logs/<name>.json`` (with how each was produced), which the
unit tests diagnose offline.

A default run plants one fault of each kind (launcher, SSH, rendezvous, interpreter, extension build,
memory, a frozen node); ``CLUSTERKIT_ALL_FAULTS=1`` (implied by ``CLUSTERKIT_WRITE_FIXTURES=1``) plants
every one. Each skipped fault's captured log is still diagnosed by the unit tests.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import sys
import threading
import time
from collections.abc import Callable

import pytest

from clusterkit.workloads.diagnose import Diagnosis, diagnose
from clusterkit.workloads.session import outcome_from_record
from tests import workload_fixtures
from tests.cluster import pyenv
from tests.cluster.clusterkit_run import REPO, bootstrapped_from_bare_homes
from tests.cluster.harness import Cluster
from tests.cluster.node import CommandResult, Node
from tests.cluster.workloads_env import install_env_with_optimizer_ops

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
ALL_FAULTS = "1" in (os.environ.get("CLUSTERKIT_ALL_FAULTS"), os.environ.get("CLUSTERKIT_WRITE_FIXTURES"))
#: A second fault of a kind already planted: run with CLUSTERKIT_ALL_FAULTS=1 (each costs a launch).
another_of_its_kind = pytest.mark.skipif(
    not ALL_FAULTS, reason="another fault of a kind already planted; CLUSTERKIT_ALL_FAULTS=1 plants it too "
                           "(its captured log is diagnosed by tests/unit/test_workloads_diagnose.py)")
LOG = "/tmp/ck-fault.json"
SMALL = "collectives ~/hostfile --ops all_reduce --sizes 64K --iters 2 --no-expect"
#: Under the repo, which every node mounts at the same path: scripts written there need no SSH, so a
#: fault that breaks SSH reaches DeepSpeed's launcher instead of stopping clusterkit's own shipping.
SHARED = REPO / "build" / "workloads-shared"
SHARED_ARGS = f" --workdir {SHARED} --shared-workdir"


@pytest.fixture(scope="module")
def training_python(cluster: Cluster) -> str:
    return install_env_with_optimizer_ops(cluster)


@pytest.fixture(scope="module")
def bootstrapped(cluster: Cluster, training_python: str) -> Cluster:
    bootstrapped_from_bare_homes(cluster, training_python)
    SHARED.mkdir(parents=True, exist_ok=True)
    os.chown(SHARED, pwd.getpwnam(cluster.user).pw_uid, pwd.getpwnam(cluster.user).pw_gid)
    SHARED.chmod(0o700)
    return cluster


def run_bench(head: Node, python: str, args: str, *, cwd: str = str(REPO), timeout: float = 300) -> CommandResult:
    head.run(f"rm -f {LOG}")
    command = (f"cd {shlex.quote(cwd)} && {shlex.quote(sys.executable)} -m clusterkit bench {args} "
               f"--python {shlex.quote(python)} --connect-timeout 3 --log {LOG} --json")
    return head.run(command, timeout=timeout)


def captured(cluster: Cluster, name: str, produced_by: str, result: CommandResult | None = None) -> Diagnosis:
    """The run the command logged, diagnosed; kept as a fixture when asked."""
    log = cluster.nodes[0].host_path(LOG)
    assert log.exists(), "no launch was logged: " + (result.stderr[-3000:] if result else "")
    text = log.read_text()
    if os.environ.get("CLUSTERKIT_WRITE_FIXTURES") == "1":
        workload_fixtures.save(name, text, produced_by)
    record = json.loads(text)["runs"][-1]
    outcome, rank_hosts = outcome_from_record(record)
    return diagnose(outcome, rank_hosts, record["workload"])


def check(diagnosis: Diagnosis, name: str) -> None:
    expected = workload_fixtures.EXPECTED[name]
    failed = [f for f in diagnosis.findings if f.outcome.value == "fail"]
    assert failed, "no finding"
    first = failed[0]
    assert first.check_id == expected.check, [(f.check_id, f.host, f.message) for f in failed]
    if expected.host:
        assert first.host == expected.host, (first.host, first.message)
    for words in expected.says:
        assert words in first.message, first.message
    assert diagnosis.tails, "no log tail"


def fault(cluster: Cluster, python: str, name: str, produced_by: str, args: str = SMALL, *, fails: bool = True,
          **kwargs: object) -> None:
    """Run the workload with the fault planted; it fails (or, with ``fails=False``, gets by with a warning)."""
    result = run_bench(cluster.nodes[0], python, args, **kwargs)  # type: ignore[arg-type]
    assert (result.rc != 0) == fails, result.stdout[-2000:] + result.stderr[-2000:]
    check(captured(cluster, name, produced_by, result), name)


def keep_file(node: Node, path: str) -> Callable[[], None]:
    """Save a file of the node; the returned function puts it back."""
    saved = node.read_file(path)

    def restore() -> None:
        node.put_file(path, saved, mode=0o600)

    return restore


# ------------------------------------------------------------------------------------------ launcher


def test_pdsh_missing_on_the_launching_node(bootstrapped: Cluster, training_python: str) -> None:
    bootstrapped.nodes[0].hide_binary("/usr/bin/pdsh")
    try:
        fault(bootstrapped, training_python, "launcher-pdsh-missing",
              "node1.hide_binary('/usr/bin/pdsh'); clusterkit bench collectives ~/hostfile from node1")
    finally:
        bootstrapped.nodes[0].unhide_binary("/usr/bin/pdsh")


@another_of_its_kind
def test_a_blank_line_in_deepspeed_env(bootstrapped: Cluster, training_python: str) -> None:
    head = bootstrapped.nodes[0]
    restore = keep_file(head, "/home/ckuser/.deepspeed_env")
    head.run("echo >> ~/.deepspeed_env", check=True)
    try:
        fault(bootstrapped, training_python, "deepspeed-env-blank-line",
              "an empty line appended to node1's ~/.deepspeed_env; bench collectives from node1")
    finally:
        restore()


# ---------------------------------------------------------------------------------------------- ssh


def test_the_launching_nodes_key_is_refused_by_a_node(bootstrapped: Cluster, training_python: str) -> None:
    node3 = bootstrapped.nodes[2]
    restore = keep_file(node3, "/home/ckuser/.ssh/authorized_keys")
    node3.run("sed -i '/clusterkit@node1/d' ~/.ssh/authorized_keys", check=True)
    try:
        shipping = run_bench(bootstrapped.nodes[0], training_python, SMALL)
        assert shipping.rc == 1
        assert "could not put the workload scripts on 1 node(s): node3: authentication to node3 failed" \
            in shipping.stderr
        fault(bootstrapped, training_python, "ssh-key-refused",
              "node1's key removed from node3's ~/.ssh/authorized_keys; bench collectives from node1 with the "
              "scripts on a shared --workdir (so pdsh, not clusterkit's shipping, meets the refusal)",
              args=SMALL + SHARED_ARGS)
    finally:
        restore()


@another_of_its_kind
def test_a_node_missing_from_known_hosts(bootstrapped: Cluster, training_python: str) -> None:
    head = bootstrapped.nodes[0]
    restore = keep_file(head, "/home/ckuser/.ssh/known_hosts")
    head.run("ssh-keygen -R node2 -f ~/.ssh/known_hosts", check=True)
    try:
        fault(bootstrapped, training_python, "ssh-host-key-unknown",
              "node2 removed from node1's ~/.ssh/known_hosts (ssh-keygen -R node2); bench collectives from node1 "
              "with the scripts on a shared --workdir", args=SMALL + SHARED_ARGS)
    finally:
        restore()


# --------------------------------------------------------------------------------------- rendezvous


def test_the_master_port_is_taken(bootstrapped: Cluster, training_python: str) -> None:
    head = bootstrapped.nodes[0]
    # SO_REUSEADDR as torch's TCPStore sets it: the earlier launches' connections to 29500 linger in
    # TIME_WAIT, and a plain bind() fails on them; a listener still keeps TCPStore's bind out.
    hold = ("import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            "s.bind(('', 29500)); s.listen(); print('held', flush=True); time.sleep(300)")
    holder = head.run(f"nohup python3 -c {shlex.quote(hold)} > held.log 2>&1 & echo $!", check=True).stdout.strip()
    try:
        head.run(f"for i in $(seq 600); do grep -q held held.log && exit 0; kill -0 {holder} || break; sleep 0.1; "
                 "done; cat held.log; exit 1", timeout=90, check=True)
        fault(bootstrapped, training_python, "master-port-busy",
              "a python listener holding port 29500 on node1; bench collectives --master-port 29500 from node1",
              args=SMALL + " --master-port 29500 --deadline 120")
    finally:
        head.run(f"kill {holder}")


@another_of_its_kind
def test_a_master_address_nobody_listens_on(bootstrapped: Cluster, training_python: str) -> None:
    node2 = bootstrapped.nodes[1]
    fault(bootstrapped, training_python, "rendezvous-unreachable",
          f"bench collectives --master-addr {node2.ip} (node2, where nothing listens on the port) --deadline 60",
          args=SMALL + f" --master-addr {node2.ip} --deadline 60")


# ------------------------------------------------------------------------------ interpreter / module


def test_the_interpreter_is_missing_on_a_node(bootstrapped: Cluster, training_python: str) -> None:
    bootstrapped.nodes[2].remove_python_env()
    try:
        fault(bootstrapped, training_python, "interpreter-missing",
              "node3.remove_python_env() (the training env deleted on node3 only); bench collectives from node1")
    finally:
        install_env_with_optimizer_ops(bootstrapped)


@another_of_its_kind
def test_the_launch_directory_exists_only_on_the_launching_node(bootstrapped: Cluster, training_python: str) -> None:
    bootstrapped.nodes[0].run("mkdir -p /tmp/only-on-node1", check=True)
    # The workload itself gets by (its script path is absolute); a job with relative paths would not.
    fault(bootstrapped, training_python, "launch-dir-missing",
          "bench collectives run from /tmp/only-on-node1, a directory of node1's private /tmp (the run "
          "succeeds: pdsh's `cd` fails on node2 and node3 and the absolute script path still works)",
          cwd="/tmp/only-on-node1", fails=False)


@another_of_its_kind
def test_deepspeed_is_not_importable_on_a_node(bootstrapped: Cluster, training_python: str) -> None:
    node3 = bootstrapped.nodes[2]
    pth = pyenv.site_packages(node3.host_path(pyenv.DEFAULT_ENV), pyenv.python_version(pyenv.shared_venv()))
    (pth / pyenv.PTH_NAME).rename(pth / (pyenv.PTH_NAME + ".off"))
    try:
        fault(bootstrapped, training_python, "module-missing",
              "node3's env lost the .pth line that makes torch/deepspeed importable; bench collectives from node1")
    finally:
        (pth / (pyenv.PTH_NAME + ".off")).rename(pth / pyenv.PTH_NAME)


@another_of_its_kind
def test_a_shared_library_of_torch_is_missing_on_a_node(bootstrapped: Cluster, training_python: str) -> None:
    node3 = bootstrapped.nodes[2]
    venv = pyenv.shared_venv()
    # libc10.so exists only in torch/lib (libgomp, say, would be found in the system's lib dir).
    libc10 = pyenv.site_packages(venv, pyenv.python_version(venv)) / "torch" / "lib" / "libc10.so"
    node3.hide_binary(str(libc10))
    try:
        fault(bootstrapped, training_python, "shared-library-missing",
              f"node3.hide_binary('{libc10}'); bench collectives from node1")
    finally:
        node3.unhide_binary(str(libc10))


# --------------------------------------------------------------------------------- extension build


def test_ninja_is_missing_on_a_node(bootstrapped: Cluster, training_python: str) -> None:
    node2 = bootstrapped.nodes[1]
    env_ninja = node2.host_path(f"{pyenv.DEFAULT_ENV}/bin/ninja")
    target = env_ninja.readlink()
    node2.hide_binary("/usr/bin/ninja")
    env_ninja.unlink()
    try:
        fault(bootstrapped, training_python, "ninja-missing",
              "node2.hide_binary('/usr/bin/ninja') and the env's bin/ninja removed on node2; bench zero "
              "--include node2 from node1", args="zero ~/hostfile --include node2 --stages 3o")
    finally:
        node2.unhide_binary("/usr/bin/ninja")
        env_ninja.symlink_to(target)


@another_of_its_kind
def test_the_compiler_is_missing_on_a_node(bootstrapped: Cluster, training_python: str) -> None:
    node2 = bootstrapped.nodes[1]
    node2.hide_binary("/usr/bin/c++")
    try:
        fault(bootstrapped, training_python, "compiler-missing",
              "node2.hide_binary('/usr/bin/c++'); bench zero --include node2 --stages 3o into a fresh "
              "--ops-cache, so DeepSpeed must compile",
              args="zero ~/hostfile --include node2 --stages 3o --ops-cache '{tmp}/clusterkit-{uid}/fresh-ops'")
    finally:
        node2.unhide_binary("/usr/bin/c++")
        node2.run("rm -rf /tmp/clusterkit-*/fresh-ops")


# ------------------------------------------------------------------------------------- cuda / gloo


@another_of_its_kind
def test_cuda_asked_of_a_cpu_only_torch(bootstrapped: Cluster, training_python: str) -> None:
    head = bootstrapped.nodes[0]
    restore = keep_file(head, "/home/ckuser/.deepspeed_env")
    head.run("echo DS_ACCELERATOR=cuda >> ~/.deepspeed_env", check=True)
    try:
        fault(bootstrapped, training_python, "torch-without-cuda",
              "DS_ACCELERATOR=cuda in node1's ~/.deepspeed_env (exported to every node; torch is the CPU "
              "build); bench collectives from node1")
    finally:
        restore()


@another_of_its_kind
def test_gloo_told_to_use_an_interface_the_nodes_lack(bootstrapped: Cluster, training_python: str) -> None:
    head = bootstrapped.nodes[0]
    restore = keep_file(head, "/home/ckuser/.deepspeed_env")
    head.run("echo GLOO_SOCKET_IFNAME=ib0 >> ~/.deepspeed_env", check=True)
    try:
        fault(bootstrapped, training_python, "gloo-interface",
              "GLOO_SOCKET_IFNAME=ib0 in node1's ~/.deepspeed_env (exported to every node); bench collectives")
    finally:
        restore()


# ----------------------------------------------------------------------------------- memory / kill


@another_of_its_kind
def test_a_node_whose_ranks_run_out_of_memory(bootstrapped: Cluster, training_python: str) -> None:
    node3 = bootstrapped.nodes[2]
    python = node3.host_path(training_python)
    real = python.with_name(python.name + ".real")
    python.rename(real)
    python.write_text(f'#!/bin/bash\nulimit -v 1500000\nexec {pyenv.DEFAULT_ENV}/bin/{real.name} "$@"\n')
    python.chmod(0o755)
    try:
        fault(bootstrapped, training_python, "cpu-oom",
              "node3's interpreter wrapped in `ulimit -v 1500000` (1.5 GB of address space); bench collectives "
              "--sizes 256M from node1", args="collectives ~/hostfile --ops all_reduce --sizes 256M --iters 1 "
                                             "--warmup 0 --no-expect")
    finally:
        python.unlink()
        real.rename(python)


def test_a_rank_killed_mid_run(bootstrapped: Cluster, training_python: str) -> None:
    head, node2, _ = bootstrapped.nodes
    outcome: list[CommandResult] = []
    runner = threading.Thread(target=lambda: outcome.append(run_bench(
        head, training_python, "collectives ~/hostfile --ops all_reduce --sizes 64K --iters 2000 --no-expect")))
    runner.start()
    pattern = shlex.quote("collectives[.]py.*--local_rank")
    for _ in range(600):
        if node2.run(f"pgrep -u ckuser -f {pattern}").rc == 0:
            break
        time.sleep(0.2)
    time.sleep(8)  # past the rendezvous, inside the timed loop
    node2.run(f"pkill -KILL -u ckuser -f {pattern}")
    runner.join(timeout=300)
    assert outcome and outcome[0].rc != 0
    check(captured(bootstrapped, "rank-sigkill",
                   "bench collectives --iters 2000 from node1; 8 s after node2's rank started: pkill -KILL of "
                   "that rank (and its output helper) on node2"), "rank-sigkill")


def test_a_frozen_node_costs_the_deadline_and_is_named(bootstrapped: Cluster, training_python: str) -> None:
    node3 = bootstrapped.nodes[2]
    node3.freeze()
    try:
        fault(bootstrapped, training_python, "frozen-node",
              "node3.freeze() (SIGSTOP of every process, sshd included); bench collectives --deadline 30 with the "
              "scripts on a shared --workdir", args=SMALL + " --deadline 30" + SHARED_ARGS, timeout=240)
    finally:
        node3.thaw()
    leftovers = [n.run(f"pgrep -u ckuser -f {shlex.quote('ck-run-i[d]=')} | wc -l").stdout.strip()
                 for n in bootstrapped.nodes]
    assert leftovers == ["0", "0", "0"]
