"""Slurm's checks judged on views of an allocation: node states with their reasons, GPUs a task sees,
CPUs against DataLoader workers, the time limit against checkpoints, the launching shell's variables."""

from __future__ import annotations

import dataclasses

import pytest

from clusterkit.checks import load_checks
from clusterkit.checks.registry import REGISTRY, ClusterView, run_cluster_checks
from clusterkit.core.findings import Finding, Outcome, Severity
from clusterkit.core.inventory import parse_hostfile, select_hosts
from clusterkit.node.facts import (
    ClusterProbes,
    Maybe,
    NodeFacts,
    SlurmFacts,
    SlurmJobFacts,
    SlurmLaunchIntent,
    SlurmNodeFacts,
    Unavailable,
)
from tests.factories import cpu_only_node, healthy_gpu_node, make_host, with_env

NODES = ["gpu01", "gpu02", "gpu03"]


def job(**changes: object) -> SlurmJobFacts:
    values: dict[str, object] = {"job_id": "42", "partition": "gpu", "nodes": list(NODES), "time_limit_s": 7200,
                                 "time_left_s": 3600, "cpus_per_task": None,
                                 "gpus_per_node": dict.fromkeys(NODES, 8), "cpus_per_node": dict.fromkeys(NODES, 32)}
    values.update(changes)
    return SlurmJobFacts(**values)  # type: ignore[arg-type]


def slurm_node(name: str, state: str = "ALLOCATED", **changes: object) -> SlurmNodeFacts:
    return dataclasses.replace(SlurmNodeFacts(name, state, cpus=32, gpus=8, partitions=["gpu"]), **changes)


def view(*, nodes: dict[str, Maybe[NodeFacts]] | None = None, slurm_nodes: list[SlurmNodeFacts] | None = None,
         job_facts: SlurmJobFacts | None = None, launch: SlurmLaunchIntent | None = None,
         head_env: dict[str, str] | None = None) -> ClusterView:
    hosts = select_hosts(parse_hostfile("".join(f"{n} slots=8\n" for n in NODES), "slurm job 42"))
    facts = nodes or {n: dataclasses.replace(healthy_gpu_node(), host=make_host(n)) for n in NODES}
    here = with_env(healthy_gpu_node(), **(head_env or {}))
    slurm = SlurmFacts(version="22.05.8", job=job_facts or job(),
                       nodes=slurm_nodes if slurm_nodes is not None else [slurm_node(n) for n in NODES],
                       launch=launch)
    probes = ClusterProbes(head="login1", clock_offset_s={}, ssh_mesh={}, master=Unavailable("not probed"),
                           head_in_hostfile=False, launch_facts=here, transport="slurm", slurm=slurm)
    return ClusterView(hosts=hosts, nodes=facts, probes=probes, hostfile="slurm job 42")


def judged(check_id: str, cluster: ClusterView) -> list[Finding]:
    load_checks()
    return run_cluster_checks([REGISTRY[check_id]], cluster)


def failed(check_id: str, cluster: ClusterView) -> list[Finding]:
    return [f for f in judged(check_id, cluster) if f.outcome is Outcome.FAIL]


def intent(**changes: object) -> SlurmLaunchIntent:
    values: dict[str, object] = {"launcher": "srun", "ranks_per_node": 8, "cpus_per_node_task": 32}
    values.update(changes)
    return SlurmLaunchIntent(**values)  # type: ignore[arg-type]


def test_a_down_node_of_the_job_is_an_error_with_slurms_reason() -> None:
    down = slurm_node("gpu02", "DOWN+NOT_RESPONDING", reason="Not responding", reason_user="slurm",
                      reason_time="2024-05-01T10:00:00")
    found = failed("slurm-node-unavailable", view(slurm_nodes=[slurm_node("gpu01"), down, slurm_node("gpu03")]))
    assert [(f.host, f.severity) for f in found] == [("gpu02", Severity.ERROR)]
    assert found[0].message == ("gpu02 is DOWN+NOT_RESPONDING in Slurm: Not responding "
                                "[set by slurm at 2024-05-01T10:00:00]")
    assert "State=RESUME" in (found[0].fix or "")


def test_a_draining_node_of_the_job_is_a_warning_it_still_runs_this_job() -> None:
    draining = slurm_node("gpu03", "MIXED+DRAIN", reason="ECC errors", reason_user="root", reason_time="t")
    found = failed("slurm-node-unavailable", view(slurm_nodes=[slurm_node("gpu01"), slurm_node("gpu02"), draining]))
    assert [(f.host, f.severity) for f in found] == [("gpu03", Severity.WARNING)]
    assert "takes no new job" in found[0].message


def test_drained_nodes_outside_the_job_are_the_partitions_warning() -> None:
    others = [slurm_node(n) for n in NODES] + [slurm_node("gpu04", "IDLE+DRAIN", reason="bad DIMM"),
                                               slurm_node("gpu05", "IDLE")]
    cluster = view(slurm_nodes=others)
    assert failed("slurm-node-unavailable", cluster) == []
    found = failed("slurm-partition-nodes-unavailable", cluster)
    assert [(f.host, f.where) for f in found] == [("gpu04", "partition gpu")]
    assert "bad DIMM" in found[0].message


def test_sinfos_short_not_responding_mark_counts() -> None:
    found = failed("slurm-node-unavailable", view(slurm_nodes=[slurm_node("gpu01", "IDLE*")]))
    assert [f.host for f in found] == ["gpu01"]


def test_fewer_gpus_in_a_task_than_the_job_holds_is_an_error() -> None:
    nodes: dict[str, Maybe[NodeFacts]] = {n: dataclasses.replace(healthy_gpu_node(8 if n != "gpu02" else 6),
                                                                 host=make_host(n)) for n in NODES}
    found = failed("slurm-gpus-hidden", view(nodes=nodes))
    assert [(f.host, f.message) for f in found] == [("gpu02", "the job holds 8 GPU(s) on gpu02 but a task there "
                                                              "sees 6")]


@pytest.mark.parametrize(("visible_devices", "fails"), [("4,5", True), (None, True), ("0,1", False)])
def test_a_task_seeing_gpus_of_other_jobs_is_an_error_unless_they_are_the_first(visible_devices: str | None,
                                                                                 fails: bool) -> None:
    leaky = with_env(dataclasses.replace(healthy_gpu_node(8), host=make_host("gpu01")),
                     CUDA_VISIBLE_DEVICES=visible_devices)
    found = failed("slurm-gpus-hidden", view(nodes={"gpu01": leaky}, job_facts=job(gpus_per_node={"gpu01": 2})))
    assert [f.host for f in found] == (["gpu01"] if fails else [])
    if fails:
        assert f"CUDA_VISIBLE_DEVICES={visible_devices or 'unset'}" in found[0].message
        assert found[0].message.startswith("a task on gpu01 sees 8 GPUs while the job holds 2")


def test_gpus_seen_by_a_job_that_holds_none_are_an_error() -> None:
    found = failed("slurm-gpus-hidden", view(nodes={"gpu01": healthy_gpu_node(8)}, job_facts=job(gpus_per_node={})))
    assert [f.message.split(" (")[0] for f in found] == ["a task on gpu01 sees 8 GPUs while the job holds none there"]


def test_gpus_the_job_never_asked_for_are_a_warning() -> None:
    nodes: dict[str, Maybe[NodeFacts]] = {
        "gpu01": dataclasses.replace(healthy_gpu_node(0), host=make_host("gpu01"))}
    found = failed("slurm-gpus-hidden", view(nodes=nodes, job_facts=job(gpus_per_node={})))
    assert [(f.host, f.severity) for f in found] == [("gpu01", Severity.WARNING)]
    assert "--gpus-per-node=8" in (found[0].fix or "")


def test_gpus_are_not_judged_where_no_task_could_read_them() -> None:
    nodes: dict[str, Maybe[NodeFacts]] = {n: cpu_only_node() for n in NODES}
    assert [f.outcome for f in judged("slurm-gpus-hidden", view(nodes=nodes))] == [Outcome.SKIP]


def test_ranks_and_dataloader_workers_beyond_the_nodes_cpus_are_a_warning() -> None:
    assert failed("slurm-cpus-per-task", view(launch=intent(dataloader_workers=3))) == []
    found = failed("slurm-cpus-per-task", view(launch=intent(dataloader_workers=4)))
    assert [f.host for f in found] == NODES
    assert found[0].message == "8 rank(s) x (1 + 4 DataLoader workers) = 40 processes share 32 CPU(s) on gpu01"


def test_deepspeeds_slurm_launcher_gives_each_rank_one_cpu_by_default() -> None:
    found = failed("slurm-cpus-per-task", view(launch=intent(launcher="slurm", dataloader_workers=2)))
    assert len(found) == 1 and "1 CPU(s) per rank task" in found[0].message


def test_cpus_are_not_judged_without_a_training_command() -> None:
    assert [f.outcome for f in judged("slurm-cpus-per-task", view())] == [Outcome.SKIP]


@pytest.mark.parametrize(("launch", "expected"), [
    (intent(checkpoint_interval_s=1800.0, checkpoint_source="--checkpoint-every 30m"), []),
    (intent(checkpoint_interval_s=7200.0, checkpoint_source="--checkpoint-every 2h"),
     ["the first checkpoint comes after 2.0 h (--checkpoint-every 2h) but the job is killed in 1.0 h"]),
    (intent(no_checkpoints=True, checkpoint_source="--save_strategy no"),
     ["the job is killed in 1.0 h and the training command saves no checkpoint (--save_strategy no)"]),
])
def test_the_time_limit_against_the_checkpoint_interval(launch: SlurmLaunchIntent, expected: list[str]) -> None:
    assert [f.message for f in failed("slurm-time-limit-checkpoint", view(launch=launch))] == expected


def test_no_time_limit_means_nothing_to_weigh() -> None:
    cluster = view(job_facts=job(time_limit_s=None, time_left_s=None), launch=intent(no_checkpoints=True))
    assert [f.outcome for f in judged("slurm-time-limit-checkpoint", cluster)] == [Outcome.SKIP]


def test_launching_from_one_task_of_many_starts_the_job_many_times() -> None:
    env = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "1"}
    found = failed("slurm-startup-env", view(head_env=env))
    assert [f.message for f in found] == ["this shell is task 1 of 3 in step 42.0: each task that runs the launch "
                                          "starts the whole job, 3 times over"]


def test_deepspeeds_slurm_launcher_inherits_the_allocations_shape() -> None:
    env = {"SLURM_JOB_ID": "42", "SLURM_NTASKS_PER_NODE": "1", "SLURM_CPUS_PER_TASK": "8"}
    found = failed("slurm-startup-env", view(head_env=env, launch=intent(launcher="slurm")))
    assert [f.where for f in found] == ["SLURM_NTASKS_PER_NODE", "SRUN_CPUS_PER_TASK", "--launcher slurm"]
    assert failed("slurm-startup-env", view(head_env=env, launch=intent())) == []


def test_slurm_checks_do_not_apply_over_ssh() -> None:
    cluster = view()
    assert cluster.probes is not None
    over_ssh = dataclasses.replace(cluster, probes=dataclasses.replace(cluster.probes, transport="ssh",
                                                                       slurm=Unavailable("not run through Slurm")))
    for check in ("slurm-node-unavailable", "slurm-gpus-hidden", "slurm-startup-env"):
        assert [f.outcome for f in judged(check, over_ssh)] == [Outcome.SKIP]
