"""clusterkit as slurmd's HealthCheckProgram on the real Slurm harness: faults drain exactly their node,
fixing them returns it, an administrator's drain stays, a hung check is cut off.

Slurm runs the slurm.conf lines and hook scripts ``clusterkit nodecheck install`` makes (health check,
prolog and epilog: the doctor test's allocation runs the prolog and epilog on every node). Each node
runs them from its private /opt, with a recorded H100 (``CLUSTERKIT_NVML_REPLAY``) and a stand-in
libcuda.so.1 on ``LD_LIBRARY_PATH``: a healthy GPU node as far as the checks can tell. Faults are
planted under those: a full /dev/shm (a tmpfs of the node's own mounted over the host's), a recording
with XIDs, the library removed, the recording replaced by a FIFO nobody writes (NVML hangs reading it).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clusterkit.core.slurmstate import parse_nodes
from clusterkit.node.facts import SlurmNodeFacts
from clusterkit.nodecheck.install import InstallOptions, hook_script, slurm_conf_lines
from clusterkit.nodecheck.policy import REASON_PREFIX
from clusterkit.nodecheck.profile import Hook
from tests.cluster.clusterkit_run import REPO
from tests.cluster.conftest import slurm_on
from tests.cluster.harness import Cluster
from tests.cluster.node import Node
from tests.cluster.slurm import SlurmCluster

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HEALTHY = FIXTURES / "h100-x1"
WITH_XID = FIXTURES / "synthetic-row-remap-pending"
HOOK_DIR = "/opt/cknc"
LOG = f"{HOOK_DIR}/nodecheck.log"
INTERVAL_S = 5
BUDGET_S = 10.0
#: A planted fault shows in Slurm within one interval and one run (plus slurmctld's own tick).
WITHIN_S = 2 * INTERVAL_S + BUDGET_S + 10


#: As ``clusterkit nodecheck install --dir /opt/cknc --budget 10 --env ...`` would make them.
OPTIONS = InstallOptions(python=sys.executable, directory=HOOK_DIR, interval_s=INTERVAL_S, log_path=LOG,
                         budget_s=BUDGET_S, env={"CLUSTERKIT_NVML_REPLAY": f"{HOOK_DIR}/nvml/nvml-readings.json",
                                                 "LD_LIBRARY_PATH": f"{HOOK_DIR}/lib"})


#: The prolog replays a recording of its own, so a fault can be planted where only the prolog sees it.
PROLOG_OPTIONS = dataclasses.replace(
    OPTIONS, env={**OPTIONS.env, "CLUSTERKIT_NVML_REPLAY": f"{HOOK_DIR}/nvml-prolog/nvml-readings.json"})


def write_hooks(node: Node) -> None:
    """The hook scripts in the node's /opt, over a healthy recorded H100."""
    for name in ("nvml", "nvml-prolog"):
        node.host_path(f"{HOOK_DIR}/{name}").mkdir(parents=True, exist_ok=True)
        set_recording(node, HEALTHY, name)
    lib = node.host_path(f"{HOOK_DIR}/lib")
    lib.mkdir(exist_ok=True)
    (lib / "libcuda.so.1").write_text("")
    for hook in Hook:
        script = node.host_path(f"{HOOK_DIR}/clusterkit-{hook.value}")
        script.write_text(hook_script(PROLOG_OPTIONS if hook is Hook.PROLOG else OPTIONS, hook))
        script.chmod(0o755)
    for directory in (node.host_path(HOOK_DIR), node.opt):
        directory.chmod(0o755)


def set_recording(node: Node, source: Path, replayed: str = "nvml") -> None:
    """Replace what the node's NVML replays (a FIFO included) with the recording in ``source``."""
    replay = node.host_path(f"{HOOK_DIR}/{replayed}")
    for old in replay.iterdir():
        old.unlink()
    for file in source.iterdir():
        shutil.copy(file, replay / file.name)


@pytest.fixture(scope="module")
def slurm(cluster: Cluster) -> Iterator[SlurmCluster]:
    for node in cluster.nodes:
        write_hooks(node)
    # The lines `nodecheck install` prints, prolog and epilog included: slurmctld and slurmd must take them.
    with slurm_on(cluster, extra_conf=tuple(slurm_conf_lines(OPTIONS))) as started:
        yield started


@pytest.fixture
def healthy(slurm: SlurmCluster) -> Iterator[SlurmCluster]:
    """Every node clean and in service before and after the test."""
    for node in slurm.cluster.nodes:
        _clear_faults(node)
    slurm.heal()
    yield slurm
    for node in slurm.cluster.nodes:
        _clear_faults(node)
    slurm.heal()


def _clear_faults(node: Node) -> None:
    node.run("if grep -q '^ckshm /dev/shm ' /proc/self/mounts; then umount -l /dev/shm; fi", user="root", check=True)
    set_recording(node, HEALTHY)
    set_recording(node, HEALTHY, "nvml-prolog")
    (node.host_path(f"{HOOK_DIR}/lib") / "libcuda.so.1").write_text("")


def show(slurm: SlurmCluster, node: Node) -> SlurmNodeFacts:
    out = slurm.host_run(["scontrol", "show", "node", node.name, "--oneliner"]).stdout
    return parse_nodes(out)[0]


def wait_for(slurm: SlurmCluster, node: Node, what: str, ready: Callable[[SlurmNodeFacts], bool],
             within_s: float = WITHIN_S) -> SlurmNodeFacts:
    deadline = time.monotonic() + within_s
    while True:
        seen = show(slurm, node)
        if ready(seen):
            return seen
        if time.monotonic() > deadline:
            log = node.host_path(LOG).read_text()[-2000:] if node.host_path(LOG).exists() else "(no log)"
            raise AssertionError(f"{node.name} not {what} within {within_s:g}s: {seen}; log: {log}")
        time.sleep(1)


def drained_by_clusterkit(seen: SlurmNodeFacts) -> bool:
    return "DRAIN" in seen.state and seen.reason.startswith(REASON_PREFIX)


def in_service(seen: SlurmNodeFacts) -> bool:
    return "DRAIN" not in seen.state and "DOWN" not in seen.state


def others_stay_in_service(slurm: SlurmCluster, faulty: Node) -> None:
    for node in slurm.cluster.nodes:
        if node is not faulty:
            seen = show(slurm, node)
            assert in_service(seen), f"{node.name} was touched: {seen}"


def plant_and_fix(slurm: SlurmCluster, node: Node, plant: Callable[[], None], fix: Callable[[], None],
                  reason: str) -> str:
    """Plant a fault, see exactly ``node`` drained with ``reason`` in its reason, fix it, see it back."""
    plant()
    seen = wait_for(slurm, node, "drained by clusterkit", drained_by_clusterkit)
    assert reason in seen.reason, seen.reason
    others_stay_in_service(slurm, node)
    fixed_at = time.monotonic()
    fix()
    wait_for(slurm, node, "back in service", in_service, within_s=INTERVAL_S + BUDGET_S + 15)
    back_after = time.monotonic() - fixed_at
    assert back_after <= INTERVAL_S + BUDGET_S + 15
    return seen.reason


def test_a_full_dev_shm_drains_its_node_and_emptying_it_returns_the_node(healthy: SlurmCluster) -> None:
    node = healthy.cluster.nodes[0]

    def plant() -> None:
        node.run("mount -t tmpfs -o size=520m ckshm /dev/shm && fallocate -l 519m /dev/shm/leftover-nccl",
                 user="root", check=True)

    reason = plant_and_fix(healthy, node, plant, lambda: node.run("rm -f /dev/shm/leftover-nccl", user="root",
                                                                   check=True), "shm-full /dev/shm")
    assert reason == "clusterkit: shm-full /dev/shm"
    log = node.host_path(LOG).read_text()
    assert "drained (clusterkit: shm-full /dev/shm)" in log and "resumed" in log


def test_an_xid_in_the_recorded_nvml_drains_its_node_naming_the_gpus(healthy: SlurmCluster) -> None:
    node = healthy.cluster.nodes[1]
    reason = plant_and_fix(healthy, node, lambda: set_recording(node, WITH_XID),
                           lambda: set_recording(node, HEALTHY), "xid-critical GPU 0,1")
    assert reason.startswith("clusterkit: xid-critical GPU 0,1, PCI 86:00.0"), reason


def test_a_missing_cuda_library_drains_its_node(healthy: SlurmCluster) -> None:
    node = healthy.cluster.nodes[2]
    library = node.host_path(f"{HOOK_DIR}/lib") / "libcuda.so.1"
    plant_and_fix(healthy, node, library.unlink, lambda: library.write_text(""), "libcuda-not-resolvable")


def test_a_node_an_administrator_drained_stays_drained_with_their_reason(healthy: SlurmCluster) -> None:
    node, faulty = healthy.cluster.nodes[2], healthy.cluster.nodes[1]
    healthy.drain(node, "admin: DIMM swap, ticket 4411")
    healthy.drain(faulty, "admin: reseat GPU 1")
    set_recording(faulty, WITH_XID)
    runs_before = _runs(node)
    deadline = time.monotonic() + 2 * INTERVAL_S + BUDGET_S + 10
    while _runs(node) < runs_before + 2 or _runs(faulty) < 2:
        assert time.monotonic() < deadline, "the health check did not run twice"
        time.sleep(1)
    for drained, said in ((node, "admin: DIMM swap, ticket 4411"), (faulty, "admin: reseat GPU 1")):
        seen = show(healthy, drained)
        assert "DRAIN" in seen.state and seen.reason == said, seen
    assert "no error; drained by someone else" in _last_line(node)
    assert "error(s), but node2 is already drained by someone else" in _last_line(faulty)


def _last_line(node: Node) -> str:
    return node.host_path(LOG).read_text().splitlines()[-1]


def _runs(node: Node) -> int:
    log = node.host_path(LOG)
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_hung_nvml_is_cut_off_within_the_budget_and_drains_saying_so(healthy: SlurmCluster) -> None:
    node = healthy.cluster.nodes[0]

    def plant() -> None:
        readings = node.host_path(f"{HOOK_DIR}/nvml/nvml-readings.json")
        readings.unlink()
        node.run(f"mkfifo {HOOK_DIR}/nvml/nvml-readings.json", user="root", check=True)

    reason = plant_and_fix(healthy, node, plant, lambda: set_recording(node, HEALTHY), "hung nvidia")
    assert reason == f"clusterkit: hung nvidia >{BUDGET_S / 2:g}s"
    hung_runs = [line for line in node.host_path(LOG).read_text().splitlines() if "hung nvidia" in line]
    walls = [float(m.group(1)) for line in hung_runs if (m := re.search(r"\[([\d.]+)s wall", line))]
    assert walls and max(walls) < BUDGET_S, hung_runs


def test_doctor_says_on_which_nodes_clusterkit_is_the_health_check_and_at_which_version(
        healthy: SlurmCluster) -> None:
    node3 = healthy.cluster.nodes[2]
    script = node3.host_path(f"{HOOK_DIR}/clusterkit-health")
    aside = script.with_name("clusterkit-health.aside")
    script.rename(aside)
    try:
        command = (f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m clusterkit doctor --json "
                   "--only slurm-nodecheck-installed")
        result = healthy.salloc(healthy.cluster.nodes[0], command, "-N3", timeout=300)
    finally:
        aside.rename(script)
    assert result.rc in (0, 1), result.stdout[-2000:] + result.stderr[-3000:]
    found = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "slurm-nodecheck-installed"]
    assert [(f["severity"], f["host"], f["outcome"]) for f in found] == [("warning", "node3", "fail")], found
    assert found[0]["message"] == (f"node3: {HOOK_DIR}/clusterkit-health is missing; "
                                   f"clusterkit's health check runs every {INTERVAL_S}s on node[1-2] only")


def test_a_health_check_run_takes_a_few_seconds_well_inside_slurms_window(healthy: SlurmCluster) -> None:
    """The whole script as slurmd runs it (interpreter start included), three times on a healthy node."""
    node = healthy.cluster.nodes[0]
    runs = []
    for _ in range(3):
        timed = node.run(f"/usr/bin/time -f '%e %U %S' {HOOK_DIR}/clusterkit-health --dry-run", user="root",
                         timeout=60)
        assert timed.rc == 0 and timed.stdout == "", timed.stdout + timed.stderr
        wall, user, system = (float(x) for x in timed.stderr.split()[-3:])
        runs.append((wall, user + system))
    print(f"nodecheck health on a healthy node: wall {[w for w, _ in runs]} s, cpu {[c for _, c in runs]} s")
    assert max(wall for wall, _ in runs) < BUDGET_S

