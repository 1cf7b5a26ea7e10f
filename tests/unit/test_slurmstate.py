"""Slurm's command output read into facts: real 22.05 output from the namespace cluster
(tests/fixtures/slurm-22.05) and synthetic lines in the same format for what it lacks (GPUs)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterkit.core.slurmstate import (
    SlurmParseError,
    count_gpus,
    expand_counts,
    expand_nodes,
    node_facts,
    parse_duration,
    parse_job,
    parse_nodes,
    parse_reasons,
    parse_record,
    unusable,
)
from clusterkit.node.facts import Unavailable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm-22.05"
#: `scontrol show job -d --oneliner` of a job holding 4 GPUs on gpu01 and 2 on gpu02 (synthetic: the test
#: cluster has no GPUs; the fields are 22.05's, as in the real fixture).
SYNTHETIC_GPU_JOB = (
    "JobId=77 JobName=train UserId=me(1000) GroupId=me(1000) JobState=RUNNING Reason=None RunTime=01:30:00 "
    "TimeLimit=1-00:00:00 Partition=gpu NodeList=gpu[01-02] NumNodes=2 NumCPUs=24 NumTasks=2 CPUs/Task=12 "
    "ReqB:S:C:T=0:0:*:* TRES=cpu=24,node=2,gres/gpu=6 NtasksPerN:B:S:C=1:0:*:* CoreSpec=* "
    "JOB_GRES=gpu:a100:6   Nodes=gpu01 CPU_IDs=0-11 Mem=0 GRES=gpu:a100:4(IDX:0-3)   "
    "Nodes=gpu02 CPU_IDs=0-5,8-13 Mem=0 GRES=gpu:a100:2(IDX:1,3) MinCPUsNode=12 Command=train.sh")


def test_a_real_job_record() -> None:
    job = parse_job((FIXTURES / "scontrol-show-job-d-oneliner.txt").read_text())
    assert (job.job_id, job.partition, job.nodes) == ("2", "debug", ["node1", "node2", "node3"])
    assert (job.time_limit_s, job.time_left_s) == (600, 600)
    assert job.cpus_per_node == {"node1": 1, "node2": 1, "node3": 1}
    assert (job.gpus_per_node, job.cpus_per_task, job.tasks_per_node) == ({}, None, None)


def test_gpus_cpus_and_time_of_a_gpu_job() -> None:
    job = parse_job(SYNTHETIC_GPU_JOB)
    assert job.gpus_per_node == {"gpu01": 4, "gpu02": 2}
    assert job.cpus_per_node == {"gpu01": 12, "gpu02": 12}
    assert (job.time_limit_s, job.time_left_s) == (86400, 86400 - 5400)
    assert (job.cpus_per_task, job.tasks_per_node) == (12, 1)


def test_real_node_records_with_a_drained_node_and_its_reason() -> None:
    nodes = parse_nodes((FIXTURES / "scontrol-show-node-oneliner.txt").read_text())
    assert [(n.name, n.state, n.address, n.cpus, n.gpus, n.partitions) for n in nodes] == [
        ("node1", "IDLE", "10.77.0.11", 2, 0, ["debug"]),
        ("node2", "IDLE+DRAIN", "10.77.0.12", 2, 0, ["debug"]),
        ("node3", "IDLE", "10.77.0.13", 2, 0, ["debug"])]
    assert (nodes[1].reason, nodes[1].reason_user, nodes[1].reason_time) == (
        "ckt planted: bad DIMM", "root", "2026-11-30T15:54:25")
    assert [unusable(n) for n in nodes] == [[], ["DRAIN"], []]


def test_sinfo_reasons_join_scontrols_records() -> None:
    reasons = (FIXTURES / "sinfo-R-N.txt").read_text()
    assert parse_reasons(reasons) == {"node2": ("ckt planted: bad DIMM", "root", "2026-11-30T15:54:25")}
    nodes = node_facts((FIXTURES / "scontrol-show-node-oneliner.txt").read_text(), reasons)
    assert nodes[1].reason == "ckt planted: bad DIMM"


def test_a_reason_with_separators_keeps_them() -> None:
    assert parse_reasons("gpu[01-02]|root|2024-05-01T10:00:00|XID 79: fell off the bus | reseat\n") == {
        "gpu01": ("XID 79: fell off the bus | reseat", "root", "2024-05-01T10:00:00"),
        "gpu02": ("XID 79: fell off the bus | reseat", "root", "2024-05-01T10:00:00")}


def test_values_keep_their_spaces_and_equals_signs() -> None:
    pairs = dict(parse_record("NodeName=n1 OS=Linux 6.1 #1 SMP CfgTRES=cpu=2,mem=1000M Reason=a = b [u@t]"))
    assert pairs == {"NodeName": "n1", "OS": "Linux 6.1 #1 SMP", "CfgTRES": "cpu=2,mem=1000M",
                     "Reason": "a = b [u@t]"}


@pytest.mark.parametrize(("text", "seconds"), [("UNLIMITED", None), ("00:10:00", 600), ("1-00:00:00", 86400),
                                               ("2-12", 216000), ("30", 1800), ("05:30", 330)])
def test_durations(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("gres", "gpus"), [("(null)", 0), ("", 0), ("gpu:8", 8), ("gpu:a100:4(S:0-1)", 4),
                                            ("gpu:2(IDX:0-1)", 2), ("gpu:a100:2(IDX:1,3),gpu:v100:1(IDX:5)", 3),
                                            ("gpu:h100:8(S:0-1),nic:2", 8), ("gpu:2(IDX:N/A)", 2),
                                            ("nic:1,gpu:4", 4)])
def test_gpus_in_gres(gres: str, gpus: int) -> None:
    assert count_gpus(gres) == gpus


def test_count_lists_of_the_allocation_environment() -> None:
    env = dict(line.split("=", 1) for line in (FIXTURES / "salloc-environment.txt").read_text().splitlines())
    assert expand_counts(env["SLURM_JOB_CPUS_PER_NODE"]) == [1, 1, 1]
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]
    with pytest.raises(SlurmParseError):
        expand_counts("2(x3")


def test_not_responding_is_read_from_either_form() -> None:
    [node] = parse_nodes("NodeName=n1 State=IDLE+NOT_RESPONDING CPUTot=x Gres=(null)")
    assert unusable(node) == ["NOT_RESPONDING"]
    assert isinstance(node.cpus, Unavailable)


def test_output_that_is_no_job_record_is_an_error_naming_it() -> None:
    with pytest.raises(SlurmParseError, match="no JobId= record"):
        parse_job("slurm_load_jobs error: Invalid job id specified")


@given(st.text(max_size=300))
def test_record_parsers_never_raise_anything_but_their_own_error(text: str) -> None:
    parse_record(text)
    parse_nodes(text)
    for parse in (parse_job, parse_reasons, parse_duration, expand_counts):
        with contextlib.suppress(SlurmParseError):
            parse(text)  # type: ignore[operator]


def _no_scontrol(nodelist: str) -> list[str]:
    raise AssertionError(f"scontrol asked for {nodelist!r}")


@pytest.mark.parametrize(("nodelist", "names"), [
    ("gpu[01-02],cpu[1-2]", ["gpu01", "gpu02", "cpu1", "cpu2"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("10.0.0.[11-12],login", ["10.0.0.11", "10.0.0.12", "login"]),
])
def test_host_lists_slurm_writes_are_read_without_asking_scontrol(nodelist: str, names: list[str]) -> None:
    assert expand_nodes(nodelist, _no_scontrol) == names


def test_a_host_list_nodeset_refuses_is_left_to_scontrol() -> None:
    asked: list[str] = []

    def scontrol(nodelist: str) -> list[str]:
        asked.append(nodelist)
        return ["node01", "node02", "node03"]

    assert expand_nodes("node[01-3]", scontrol) == ["node01", "node02", "node03"]
    assert asked == ["node[01-3]"]
    with pytest.raises(SlurmParseError, match="node\\[01-3\\]"):
        expand_nodes("node[01-3]")
