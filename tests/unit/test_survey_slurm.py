"""The allocation as hostfile entries, and which nodes the survey through srun leaves out."""

from __future__ import annotations

from clusterkit.cluster.remote.slurm import Allocation
from clusterkit.cluster.slurm import allocation_hostfile, blocked_nodes, hostfile_text, why_blocked
from clusterkit.core.inventory import parse_hostfile, select_hosts
from clusterkit.node.facts import SlurmFacts, SlurmJobFacts, SlurmNodeFacts


def allocation(**changes: object) -> Allocation:
    values: dict[str, object] = {"job_id": "41", "partition": "gpu", "nodes": ["gpu02", "gpu01", "gpu03"],
                                 "time_limit_s": None, "time_left_s": None, "cpus_per_task": None,
                                 "gpus_per_node": {"gpu02": 8, "gpu01": 8, "gpu03": 4}}
    values.update(changes)
    return Allocation(SlurmJobFacts(**values))  # type: ignore[arg-type]


def test_the_allocation_is_a_hostfile_in_node_rank_order_with_its_gpus_as_slots() -> None:
    nodes = allocation_hostfile(allocation())
    assert nodes.path == "slurm job 41"
    assert [(h.name, h.slots, h.line) for h in nodes.hosts] == [("gpu02", 8, 1), ("gpu01", 8, 2), ("gpu03", 4, 3)]
    assert [h.name for h in select_hosts(nodes, exclude="gpu01")] == ["gpu02", "gpu03"]


def test_the_written_hostfile_reads_back_as_deepspeed_would() -> None:
    text = hostfile_text(allocation())
    assert text.splitlines()[0] == "# from slurm job 41 (gpu)"
    parsed = parse_hostfile(text, "hostfile")
    assert [(h.name, h.slots) for h in parsed.hosts] == [("gpu02", 8), ("gpu01", 8), ("gpu03", 4)]
    assert [h.slots for h in parse_hostfile(hostfile_text(allocation(), slots=2), "h").hosts] == [2, 2, 2]


def test_without_gpus_slots_are_the_tasks_per_node_else_one() -> None:
    assert [h.slots for h in allocation_hostfile(allocation(gpus_per_node={}, tasks_per_node=2)).hosts] == [2, 2, 2]
    assert [h.slots for h in allocation_hostfile(allocation(gpus_per_node={})).hosts] == [1, 1, 1]


def test_nodes_slurm_will_not_run_get_no_task_and_say_why() -> None:
    nodes = [SlurmNodeFacts("gpu01", "ALLOCATED"),
             SlurmNodeFacts("gpu02", "DOWN+NOT_RESPONDING", reason="Not responding", reason_user="slurm",
                            reason_time="2024-05-01T10:00:00"),
             SlurmNodeFacts("gpu03", "MIXED+DRAIN", reason="bad DIMM")]
    slurm = SlurmFacts(version="22.05.8", job=allocation().job, nodes=nodes)
    blocked = blocked_nodes(slurm, ["gpu01", "gpu02", "gpu03"])
    assert list(blocked) == ["gpu02"]  # a draining node still runs its job's steps
    assert why_blocked(blocked["gpu02"]) == ("Slurm says gpu02 is DOWN+NOT_RESPONDING: Not responding (set by "
                                              "slurm at 2024-05-01T10:00:00); no task was started there")
