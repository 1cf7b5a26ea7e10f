"""Workloads in a Slurm allocation, their pure parts: the srun line SlurmNodes gives a workload, srun's
labelled lines and failures read as pdsh's are, and the command that puts the scripts on a node (run here
by a real shell, as every transport runs it)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from clusterkit.cluster import CommandOutput, HostResult
from clusterkit.cluster.remote.slurm import Allocation
from clusterkit.cluster.slurm import SlurmNodes
from clusterkit.core.inventory import ActiveHost, HostEntry
from clusterkit.node.facts import SlurmJobFacts
from clusterkit.workloads.run import LogLine, failure_signal, split_line
from clusterkit.workloads.session import WorkloadContext
from clusterkit.workloads.ship import bundle_digest, bundle_files, placed_at, ship_command

NODES = ["gpu01", "gpu02", "gpu03"]


def hosts(slots: int = 2) -> list[ActiveHost]:
    return [ActiveHost(n, tuple(range(slots)), HostEntry(n, slots, i + 1)) for i, n in enumerate(NODES)]


def slurm_nodes(cpus: int = 0) -> SlurmNodes:
    job = SlurmJobFacts(job_id="42", partition="gpu", nodes=list(NODES), time_limit_s=3600, time_left_s=3000,
                        cpus_per_task=None, gpus_per_node={n: 2 for n in NODES},
                        cpus_per_node={n: cpus for n in NODES} if cpus else {})
    return SlurmNodes(Allocation(job), hosts(), environ={})


def srun_line(nodes: SlurmNodes, **changes: object) -> list[str]:
    ctx = WorkloadContext(nodes=nodes, python="/opt/env/bin/python", cwd="/repo",  # type: ignore[arg-type]
                          exports={"PYTHONPATH": "/repo"}, **changes)  # type: ignore[arg-type]
    plan = ctx.plan("/tmp/w/collectives.py", ["--ops", "all_reduce"], "abcdef123456")
    return nodes.launch_line(plan, ctx.hosts, ctx.style()).argv


def test_a_workload_starts_as_one_srun_task_per_node_running_deepspeeds_launch_py() -> None:
    argv = srun_line(slurm_nodes(), master_addr="10.0.0.1")
    assert argv[:2] == ["srun", "--jobid=42"]
    assert "--nodelist=gpu[01-03]" in argv and "--ntasks-per-node=1" in argv and "--gres=gpu:2" in argv
    assert "--label" in argv and "--chdir=/repo" in argv
    assert argv[argv.index("env") + 1] == "PYTHONPATH=/repo"
    assert argv[-4:] == ["/tmp/w/collectives.py", "--ops", "all_reduce", "--ck-run-id=abcdef123456"]
    assert "--master_addr=10.0.0.1" in argv and "--master_port=29500" in argv


def test_a_workload_step_shares_the_job_with_its_other_steps_and_takes_each_nodes_cpus() -> None:
    # --overlap: the clean-up step, or a second pair of the slow-node search, runs beside it.
    argv = srun_line(slurm_nodes(cpus=8), master_addr="10.0.0.1")
    assert "--overlap" in argv and "--cpus-per-task=8" in argv


def test_without_a_master_address_the_first_nodes_is_used_as_this_machine_resolves_it() -> None:
    argv = srun_line(SlurmNodes(Allocation(SlurmJobFacts(job_id="7", partition="", nodes=["localhost"],
                                                         time_limit_s=None, time_left_s=None,
                                                         cpus_per_task=None)),
                                [ActiveHost("localhost", (0,), HostEntry("localhost", 1, 1))], environ={}))
    assert "--master_addr=127.0.0.1" in argv


def test_srun_labels_name_the_node_and_rank_tags_still_name_the_rank() -> None:
    assert split_line(" 1: [ck:rank=3] step 2", NODES, NODES) == ("gpu02", 3, "step 2")
    assert split_line("2: launch.py says hi", NODES, NODES) == ("gpu03", None, "launch.py says hi")
    assert split_line("7: out of range", NODES, NODES) == (None, None, "7: out of range")
    assert split_line("1: no labels without task nodes", NODES) == (None, None, "1: no labels without task nodes")


def test_a_task_that_srun_says_exited_badly_is_a_failure_signal() -> None:
    def line(text: str) -> LogLine:
        return LogLine(0.0, "err", None, None, text)

    assert failure_signal(line("srun: error: gpu02: task 1: Exited with exit code 1"))
    assert not failure_signal(line("srun: error: gpu02: task 1: Exited with exit code 0"))


def test_the_ship_command_unpacks_the_inline_bundle_once_and_says_where(tmp_path: Path) -> None:
    command = ship_command(str(tmp_path / "work"), None)
    env = {**os.environ, "CLUSTERKIT_NODE": "gpu01"}
    outputs = []
    for _ in range(2):  # the second time it is already there
        done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, done.stderr
        outputs.append(CommandOutput(0, done.stdout, done.stderr))
    where = tmp_path / "work" / f"workloads-{bundle_digest()}"
    for output in outputs:
        assert placed_at(HostResult("gpu01", value=output)) == (str(where), None)
    assert sorted(p.name for p in where.iterdir()) == sorted(bundle_files())
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [where.name]  # no scratch left


def test_a_node_that_cannot_take_the_scripts_says_why() -> None:
    failed = CommandOutput(4, "", "/x is not owned by ck\n")
    assert placed_at(HostResult("gpu02", value=failed)) == (None, "/x is not owned by ck (exit 4)")
    assert placed_at(HostResult("gpu03", error="gpu03 gave no answer")) == (None, "gpu03 gave no answer")
    assert shlex.split(ship_command(None, None))  # a shell word list, the bundle inline
