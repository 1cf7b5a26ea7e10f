"""What clusterkit asks salloc for: the environment it runs in (issue 19, W7) and whether Slurm can grant the
request now, judged on real 22.05 output of the namespace cluster (tests/fixtures/slurm-22.05; node2 there is
drained with a reason) before anything waits (issue 19, W10)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from clusterkit.cluster.remote.slurm import _salloc_fix
from clusterkit.core.slurmrequest import (
    Partition,
    RequestedShape,
    SlurmRequest,
    grantable,
    job_variable,
    parse_partitions,
    request_environment,
    requested_shape,
    shortfall,
)
from clusterkit.core.slurmstate import parse_nodes
from clusterkit.node.facts import SlurmNodeFacts

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm-22.05"


def fixture_environment(name: str) -> dict[str, str]:
    lines = (FIXTURES / name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def nodes() -> list[SlurmNodeFacts]:
    """node1 and node3 idle, node2 IDLE+DRAIN ("ckt planted: bad DIMM", set by root), all in `debug`."""
    return parse_nodes((FIXTURES / "scontrol-show-node-oneliner.txt").read_text())


def partitions() -> list[Partition]:
    return parse_partitions((FIXTURES / "scontrol-show-partition-oneliner.txt").read_text())


# --- the environment salloc runs in (issue 19, W7) ---------------------------------------------------------


def test_user_configuration_of_slurms_clients_reaches_salloc() -> None:  # issue 19, W7
    user = {"SLURM_CONF": "/opt/slurm/etc/slurm.conf", "SLURM_CLUSTERS": "ckt0", "SLURM_DEBUG_FLAGS": "Gres",
            "SLURM_EXIT_ERROR": "9", "SLURM_EXIT_IMMEDIATE": "10", "SLURM_HINT": "nomultithread",
            "SLURM_TIME_FORMAT": "relative", "SALLOC_ACCOUNT": "proj", "SALLOC_PARTITION": "gpu",
            "SALLOC_GPUS_PER_NODE": "8", "PATH": "/usr/bin", "HOME": "/home/me"}
    assert request_environment(user) == user


def test_every_variable_of_a_real_job_is_dropped_but_the_config_it_names() -> None:  # issue 19, W7
    inside = {**fixture_environment("salloc-environment.txt"), **fixture_environment("srun-task-environment.txt")}
    kept = request_environment({**inside, "PATH": "/usr/bin"})
    assert kept == {"SLURM_CONF": inside["SLURM_CONF"], "PATH": "/usr/bin"}
    assert {name for name in inside if not job_variable(name)} == {"SLURM_CONF"}


@pytest.mark.parametrize("name", ["SLURM_JOB_ID", "SLURM_JOBID", "SLURM_STEP_ID", "SLURM_NTASKS_PER_NODE",
                                  "SLURM_CPUS_PER_TASK", "SLURM_GPUS_ON_NODE", "SLURMD_NODENAME", "SLURM_PROCID",
                                  "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST_HET_GROUP_1", "SLURM_MEM_BIND_TYPE"])
def test_variables_slurm_sets_for_a_job_are_a_jobs(name: str) -> None:
    assert job_variable(name)


# --- what a request needs -----------------------------------------------------------------------------------


def test_the_shape_comes_from_the_flags_then_salloc_args_then_salloc_variables() -> None:
    assert requested_shape(SlurmRequest(nodes="3"), {}) == RequestedShape(("",), 3)
    assert requested_shape(SlurmRequest(), {}) == RequestedShape(("",), 1)  # salloc's default: one node
    assert requested_shape(SlurmRequest(partition="gpu", nodes="2-4"), {}) == RequestedShape(("gpu",), 2)
    assert requested_shape(SlurmRequest(extra=("-p", "big", "-N4", "--nodelist=gpu[01-02]")), {}) == \
        RequestedShape(("big",), 4, ("gpu01", "gpu02"))
    assert requested_shape(SlurmRequest(nodes="2"), {"SALLOC_PARTITION": "a,b"}) == RequestedShape(("a", "b"), 2)
    assert requested_shape(SlurmRequest(partition="gpu", extra=("--partition=big",)), {}) == \
        RequestedShape(("big",), 1)  # the last one on salloc's line


@pytest.mark.parametrize(("request_", "environ"), [
    (SlurmRequest(nodes="3", extra=("-M", "other")), {}),           # another cluster's state is not read here
    (SlurmRequest(nodes="3"), {"SLURM_CLUSTERS": "other"}),
    (SlurmRequest(nodelist="/home/me/nodes.txt"), {}),             # a node list in a file
    (SlurmRequest(nodes="1,4,8"), {}),                             # a count form clusterkit does not read
])
def test_a_request_clusterkit_cannot_read_is_left_to_salloc(request_: SlurmRequest, environ: dict[str, str]) -> None:
    assert requested_shape(request_, environ) is None


# --- whether it can be had now (issue 19, W10) --------------------------------------------------------------


def test_more_nodes_than_take_jobs_cannot_be_had_and_the_drained_one_says_why() -> None:  # issue 19, W10
    short = shortfall(RequestedShape(("",), 3), partitions(), nodes())
    assert short is not None
    assert short.message == ("3 nodes cannot be had now in partition debug: 2 of its 3 nodes take jobs (node[1,3]); "
                             "node2 is IDLE+DRAIN: ckt planted: bad DIMM [set by root at 2026-11-30T15:54:25]")
    assert short.fix == ("ask for what can be had now: --nodes 2; once fixed, an admin returns node2 to service: "
                         "scontrol update NodeName=node2 State=RESUME")


def test_a_named_node_that_takes_no_job_is_a_shortfall_and_the_rest_are_offered() -> None:  # issue 19, W10
    short = shortfall(RequestedShape(("debug",), 1, ("node1", "node2")), partitions(), nodes())
    assert short is not None
    assert short.message.startswith("--nodelist node[1-2] cannot be had now in partition debug: ")
    assert "node2 is IDLE+DRAIN: ckt planted: bad DIMM" in short.message
    assert short.fix.startswith("ask for what can be had now: --nodelist node1 or --nodes 2 (no --nodelist); ")


def test_what_enough_nodes_can_take_is_no_shortfall_even_when_they_are_busy() -> None:
    busy = [replace(n, state="ALLOCATED") if n.name != "node2" else n for n in nodes()]
    assert shortfall(RequestedShape(("",), 2), partitions(), busy) is None
    assert grantable(RequestedShape(("",), 2), partitions(), busy)
    assert shortfall(RequestedShape(("debug",), 1, ("node1", "node3")), partitions(), busy) is None
    asleep = [replace(n, state="IDLE+POWERED_DOWN") for n in nodes()]  # Slurm powers them up for the job
    assert shortfall(RequestedShape(("",), 3), partitions(), asleep) is None


@pytest.mark.parametrize("state", ["DOWN+NOT_RESPONDING", "IDLE*", "MIXED+DRAIN", "DOWN+INVALID_REG", "IDLE+FAIL"])
def test_nodes_slurm_starts_nothing_on_count_against_the_request(state: str) -> None:
    listed = [replace(n, state=state, reason="") if n.name == "node3" else n for n in nodes()]
    short = shortfall(RequestedShape(("",), 2), partitions(), listed)
    assert short is not None
    assert short.message.startswith("2 nodes cannot be had now in partition debug: 1 of its 3 nodes takes jobs (node1)")
    assert f"node3 is {state} (no reason given)" in short.message
    assert "--nodes 1" in short.fix and "NodeName=node[2-3] State=RESUME" in short.fix


def test_a_partition_that_is_not_up_starts_no_job() -> None:
    down = [replace(p, state="DOWN") for p in partitions()]
    short = shortfall(RequestedShape(("",), 1), down, nodes())
    assert short is not None
    assert short.message == "1 node cannot be had now: partition debug is DOWN, so Slurm starts no job there"
    assert "scontrol show partition debug" in short.fix


def test_more_nodes_than_the_partition_has_says_how_many_it_has() -> None:
    short = shortfall(RequestedShape(("",), 5), partitions(), nodes())
    assert short is not None
    assert short.fix.endswith("partition debug has only 3 nodes")


def test_many_unavailable_nodes_are_counted_not_all_named() -> None:
    many = [SlurmNodeFacts(f"gpu{i:02d}", "DOWN", reason="rack power", partitions=["debug"]) for i in range(1, 9)]
    short = shortfall(RequestedShape(("",), 2), partitions(), many)
    assert short is not None
    assert short.message.count(" is DOWN: rack power") == 5
    assert short.message.endswith("and 3 more (sinfo -R -p debug)")
    assert "none of its 8 nodes takes a job" in short.message and "ask for" not in short.fix


@pytest.mark.parametrize(("shape", "listed"), [
    (RequestedShape(("nosuch",), 3), partitions()),                                  # salloc names it
    (RequestedShape(("",), 3), [replace(p, default=False) for p in partitions()]),  # no default partition
    (RequestedShape(("debug",), 1, ("node9",)), partitions()),
    (RequestedShape(("debug", "nosuch"), 3), partitions()),
])
def test_what_this_machine_is_not_shown_is_left_to_salloc(shape: RequestedShape, listed: list[Partition]) -> None:
    assert shortfall(shape, listed, nodes()) is None
    assert not grantable(shape, listed, nodes())  # nor is a wait then blamed on busy nodes
    assert shortfall(shape, listed, []) is None  # PrivateData=nodes hides them


def test_any_listed_partition_that_can_grant_it_is_enough() -> None:
    spare = [*nodes(), *(SlurmNodeFacts(f"big{i}", "IDLE", partitions=["big"]) for i in (1, 2, 3))]
    both = [*partitions(), Partition("big", "UP")]
    assert shortfall(RequestedShape(("debug", "big"), 3), both, spare) is None
    short = shortfall(RequestedShape(("debug", "big"), 4), both, spare)
    assert short is not None
    assert "in partition debug" in short.message and "in partition big" in short.message


# --- when salloc gives up -----------------------------------------------------------------------------------


def test_salloc_that_waited_blames_busy_nodes_only_where_enough_were_seen_to_take_jobs() -> None:
    waited = ("salloc: Pending job allocation 7\nsalloc: job 7 queued and waiting for resources\n"
              "salloc: error: Unable to allocate resources: Connection timed out\n")
    assert "busy for 60s" in _salloc_fix(waited, 60, True) and "--slurm-wait" in _salloc_fix(waited, 60, True)
    assert "down or drained" in _salloc_fix(waited, 60, False)  # not judged: either may be why


def test_salloc_that_refused_outright_blames_no_node() -> None:  # issue 19, W7
    refused = ("salloc: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host\n"
               "salloc: error: fetch_config: DNS SRV lookup failed\n"
               "salloc: error: _establish_config_source: failed to fetch config\n")
    fix = _salloc_fix(refused, 60, False)
    assert "drained" not in fix and "SLURM_CONF" in fix
