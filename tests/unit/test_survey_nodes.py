"""The survey and the doctor over a stand-in ``Nodes``: every path (a node that refuses, times out, sends
an unreadable reply, one the scheduler says is down, a master step that fails) in milliseconds.

Each scripted node answers the agent as the real one would: its facts, the listener's verdict where it
was asked to hold the master port, the connection's where it was asked to connect. The real transports
are proved by the cluster tests (tests/cluster/test_first_day.py over SSH, test_slurm.py over Slurm).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from clusterkit import survey
from clusterkit.checks import load_checks
from clusterkit.checks.registry import select_checks
from clusterkit.cluster import CommandOutput, SchedulerView
from clusterkit.cluster.remote.ssh import RemoteError, SshSettings
from clusterkit.core.launchsite import LaunchPlace
from clusterkit.doctor import doctor_cluster
from clusterkit.node.facts import (
    ClusterProbes,
    CollectReply,
    ConnectProbe,
    MasterProbe,
    Maybe,
    NodeFacts,
    PortHoldProbe,
    SlurmFacts,
    SlurmJobFacts,
    SshLoginProbe,
    Unavailable,
    to_jsonable,
)
from clusterkit.survey import AUTO_PORT, SurveyOptions, survey_nodes
from tests.factories import cpu_only_node, make_host
from tests.fake_nodes import FakeNodes, hosts_named

ADDRESSES = "10.0.0.1 172.17.0.1"
HEAD_FACTS = cpu_only_node(host=make_host("login"))


class Agents:
    """The agent on every scripted node: facts named after the node, probes answered as asked."""

    def __init__(self, connect_fails: dict[str, str] | None = None, wire: dict[str, Any] | None = None) -> None:
        self.args: dict[str, list[str]] = {}
        self.connect_fails = connect_fails or {}
        self.wire = wire or {}

    def __call__(self, host: str, args: list[str]) -> Any:
        self.args[host] = args
        if host in self.wire:
            return self.wire[host]
        reply = CollectReply(cpu_only_node(host=make_host(host)))
        if "--listen-port" in args:
            reply.listen = PortHoldProbe(int(value_of(args, "--listen-port")), True)
        if "--connect" in args:
            why = self.connect_fails.get(host)
            reply.connect = ConnectProbe(why is None, why or "")
        if "--ssh-check" in args:
            reply.ssh = [SshLoginProbe(t, True) for t in value_of(args, "--ssh-check").split(",")]
        return to_jsonable(reply)


def value_of(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def first_node_prints(stdout: str) -> Any:
    def run(host: str, command: str) -> CommandOutput:
        return CommandOutput(0, stdout)
    return run


def refuses(why: str, fix: str | None = None) -> Any:
    def run(host: str, *_: Any) -> Any:
        raise RemoteError(why, fix=fix)
    return run


@pytest.fixture(autouse=True)
def launched_from_a_login_node(monkeypatch: pytest.MonkeyPatch) -> list[list[str] | None]:
    """The launching machine is a login node outside the hostfile, read in-process (here: at once)."""
    read: list[list[str] | None] = []

    def collect_here(options: SurveyOptions, sections: list[str] | None = None) -> Maybe[NodeFacts]:
        read.append(sections)
        return HEAD_FACTS

    monkeypatch.setattr(survey, "collect_here", collect_here)
    monkeypatch.setattr(survey, "launch_place", lambda names: LaunchPlace(entry=None, name="login", local_only=False))
    return read


def cluster(*names: str, agents: Agents | None = None, **kw: Any) -> FakeNodes:
    kw.setdefault("on_run", first_node_prints(ADDRESSES + "\n"))
    return FakeNodes(hosts_named(*names), on_agent=agents or Agents(), **kw)


def surveyed(nodes: FakeNodes, **options: Any) -> tuple[dict[str, Maybe[NodeFacts]], ClusterProbes]:
    started = time.monotonic()
    result = survey_nodes(nodes, SurveyOptions(python="/env/bin/python", cwd="/work", **options))
    assert time.monotonic() - started < 1.0  # no real node, no real wait
    return result


def master_of(probes: ClusterProbes) -> MasterProbe:
    assert isinstance(probes.master, MasterProbe), probes.master
    return probes.master


def slurm_view(unusable: dict[str, str], job_id: str = "42") -> SchedulerView:
    job = SlurmJobFacts(job_id, "debug", ["node1", "node2", "node3"], None, None, None)
    return SchedulerView(SlurmFacts(version="22.05.8", job=job, nodes=Unavailable("not read here")), unusable,
                         {n: f"scontrol show node {n}" for n in unusable})


# --------------------------------------------------------------------------------------- every node


def test_every_node_gives_its_facts_and_reaches_the_first_nodes_master_port() -> None:
    agents = Agents()
    nodes = cluster("node1", "node2", "node3", agents=agents)
    facts, probes = surveyed(nodes)
    assert {n: f.host.hostname for n, f in facts.items() if not isinstance(f, Unavailable)} == {
        "node1": "node1", "node2": "node2", "node3": "node3"}
    master = master_of(probes)
    assert (master.host, master.address, master.all_addresses, master.port) == (
        "node1", "10.0.0.1", ["10.0.0.1", "172.17.0.1"], 29500)
    assert master.port_free is True
    assert {h: p.ok for h, p in master.reachable_from.items() if isinstance(p, ConnectProbe)} == {
        "node1": True, "node2": True, "node3": True}
    # Only the first node holds the port, until all three have connected; all connect to it.
    assert value_of(agents.args["node1"], "--listen-expect") == "3"
    assert [h for h, a in agents.args.items() if "--listen-port" in a] == ["node1"]
    assert {value_of(a, "--connect") for a in agents.args.values()} == {"10.0.0.1:29500"}
    assert all(isinstance(o, float) for o in probes.clock_offset_s.values())
    assert (probes.head, probes.head_in_hostfile, probes.transport) == ("login", False, "fake")
    assert probes.launch_facts is HEAD_FACTS


def test_the_launching_machine_is_read_in_process_for_what_the_launcher_needs(
        launched_from_a_login_node: list[list[str] | None]) -> None:
    surveyed(cluster("node1", "node2"))
    assert launched_from_a_login_node == [survey.LAUNCH_SECTIONS]


def test_the_agent_inspects_the_training_interpreter_and_script_from_the_launch_directory() -> None:
    agents = Agents()
    surveyed(cluster("node1", "node2", agents=agents), script="train.py", fresh=True)
    args = agents.args["node2"]
    assert args[0] == "collect"
    assert (value_of(args, "--python"), value_of(args, "--cwd"), value_of(args, "--script")) == (
        "/env/bin/python", "/work", "train.py")
    assert "--fresh" in args


# ----------------------------------------------------------------------------------------- over SSH


def test_where_nodes_log_into_each_other_over_ssh_the_agent_reads_every_peers_host_keys() -> None:
    agents = Agents()
    _facts, probes = surveyed(cluster("node1", "node2", agents=agents, mesh=SshSettings(port=2222)))
    for args in agents.args.values():
        assert value_of(args, "--peers") == "[node1]:2222,[node2]:2222"
        assert value_of(args, "--sshd-address") == "ssh"
        assert "--ssh-check" not in args  # static: judged from files, no live login
    assert probes.ssh_mesh == {}
    assert probes.mesh_mode == "static"


def test_a_ring_mesh_logs_each_node_into_the_next() -> None:
    agents = Agents()
    _facts, probes = surveyed(cluster("node1", "node2", "node3", agents=agents, mesh=SshSettings()), mesh="ring")
    assert {h: value_of(a, "--ssh-check") for h, a in agents.args.items()} == {
        "node1": "node2", "node2": "node3", "node3": "node1"}
    assert all("--ssh-port" not in a for a in agents.args.values())
    assert probes.mesh_mode == "ring"
    assert {h: [p.host for p in logins] for h, logins in probes.ssh_mesh.items()
            if not isinstance(logins, Unavailable)} == {"node1": ["node2"], "node2": ["node3"], "node3": ["node1"]}


def test_without_ssh_between_nodes_no_login_nor_host_key_is_probed() -> None:
    agents = Agents()
    _facts, probes = surveyed(cluster("node1", "node2", agents=agents), mesh="full")
    assert all(flag not in a for a in agents.args.values() for flag in ("--ssh-check", "--peers", "--sshd-address"))
    assert (probes.ssh_mesh, probes.mesh_mode) == ({}, "static")


# ------------------------------------------------------------------------------------- failing nodes


def test_a_node_that_refuses_is_reported_with_its_fix_and_the_others_are_still_judged() -> None:
    agents = Agents()

    def agent(host: str, args: list[str]) -> Any:
        if host == "node2":
            refuses("node2: authentication failed", fix="ssh-copy-id node2")(host)
        return agents(host, args)

    facts, probes = surveyed(FakeNodes(hosts_named("node1", "node2", "node3"), on_agent=agent,
                                       on_run=first_node_prints(ADDRESSES)))
    assert facts["node2"] == Unavailable("node2: authentication failed")
    assert probes.clock_offset_s["node2"] == Unavailable("node unreachable")
    assert probes.unreachable_fixes == {"node2": "ssh-copy-id node2"}
    assert not isinstance(facts["node3"], Unavailable)
    assert set(master_of(probes).reachable_from) == {"node1", "node3"}


def test_a_node_that_times_out_costs_its_own_facts_only() -> None:
    facts, probes = surveyed(cluster("node1", "node2", "node3", timeouts={"node3"}))
    assert isinstance(facts["node3"], Unavailable) and "no answer within the deadline" in facts["node3"].reason
    assert probes.unreachable_fixes == {"node3": "check node3 by hand"}
    assert [n for n, f in facts.items() if not isinstance(f, Unavailable)] == ["node1", "node2"]


def test_a_node_that_answers_after_the_listener_gave_up_is_named_in_the_master_probe() -> None:
    late = "timed out after 12s: connection refused"
    facts, probes = surveyed(cluster("node1", "node2", "node3", agents=Agents(connect_fails={"node3": late})))
    reached = master_of(probes).reachable_from
    assert reached["node3"] == ConnectProbe(False, late)
    assert reached["node2"] == ConnectProbe(True)
    assert not isinstance(facts["node3"], Unavailable)


def test_a_reply_this_clusterkit_cannot_read_is_that_nodes_error() -> None:
    facts, probes = surveyed(cluster("node1", "node2", agents=Agents(wire={"node2": {"facts": "not facts"}})))
    assert isinstance(facts["node2"], Unavailable)
    assert "does not match this clusterkit's wire" in facts["node2"].reason
    assert probes.clock_offset_s["node2"] == Unavailable("unreadable reply")


def test_an_unreachable_first_node_leaves_the_master_probe_unavailable_and_the_rest_surveyed() -> None:
    agents = Agents()
    nodes = cluster("node1", "node2", agents=agents, timeouts={"node1"})
    facts, probes = surveyed(nodes)
    assert probes.master == Unavailable("first host node1 is unreachable")
    assert isinstance(facts["node1"], Unavailable) and "no answer within the deadline" in facts["node1"].reason
    assert probes.unreachable_fixes == {"node1": "check node1 by hand"}
    assert not isinstance(facts["node2"], Unavailable)
    assert "--connect" not in agents.args["node2"]  # no address to connect to
    assert [c.kind for c in nodes.calls if "node1" in c.hosts] == ["run"]  # one timeout, not two


# ----------------------------------------------------------------------------------- the master step


def test_a_first_node_refusing_the_master_step_is_unreachable_and_not_asked_again() -> None:
    agents = Agents()
    nodes = cluster("node1", "node2", agents=agents, on_run=refuses("node1: connection refused", fix="start sshd"))
    facts, probes = surveyed(nodes)
    assert facts["node1"] == Unavailable("node1: connection refused")
    assert probes.unreachable_fixes == {"node1": "start sshd"}
    assert probes.master == Unavailable("first host node1 is unreachable")
    assert list(agents.args) == ["node2"] and not isinstance(facts["node2"], Unavailable)
    assert "--connect" not in agents.args["node2"]


def test_a_master_step_that_prints_nothing_leaves_the_probe_unavailable_while_the_facts_still_come() -> None:
    agents = Agents()
    facts, probes = surveyed(cluster("node1", "node2", agents=agents,
                                     on_run=lambda host, command: CommandOutput(127, "", "hostname: not found")))
    assert probes.master == Unavailable("`hostname -I` on node1 printed no address")
    assert all(not isinstance(f, Unavailable) for f in facts.values())
    assert all("--listen-port" not in a and "--connect" not in a for a in agents.args.values())


def test_a_first_node_with_no_address_is_said_so() -> None:
    _facts, probes = surveyed(cluster("node1", "node2", on_run=first_node_prints("\n")))
    assert probes.master == Unavailable("`hostname -I` on node1 printed no address")


def test_an_automatic_port_is_the_one_the_first_node_found_free() -> None:
    agents = Agents()
    nodes = cluster("node1", "node2", agents=agents, on_run=first_node_prints(f"{ADDRESSES}\n40123\n"))
    _facts, probes = surveyed(nodes, master_port=AUTO_PORT)
    assert master_of(probes).port == 40123
    assert value_of(agents.args["node1"], "--listen-port") == "40123"
    [step] = [c for c in nodes.calls if c.kind == "run"]
    assert step.hosts == ["node1"] and "hostname -I" in step.detail and "socket" in step.detail


def test_an_automatic_port_with_no_python_on_the_first_node_is_said_so() -> None:
    _facts, probes = surveyed(cluster("node1", "node2"), master_port=AUTO_PORT)
    assert probes.master == Unavailable("no free port found on node1 (no Python 3 there?)")


def test_a_given_master_address_is_probed_first() -> None:
    agents = Agents()
    _facts, probes = surveyed(cluster("node1", "node2", agents=agents), master_addr="172.17.0.1")
    assert master_of(probes).all_addresses == ["172.17.0.1", "10.0.0.1"]
    assert value_of(agents.args["node2"], "--connect") == "172.17.0.1:29500"


def test_without_probes_only_the_facts_are_collected() -> None:
    agents = Agents()
    nodes = cluster("node1", "node2", agents=agents, mesh=SshSettings(), scheduler=None)
    _facts, probes = surveyed(nodes, probes=False)
    assert [c.kind for c in nodes.calls] == ["agent"]
    assert all(a == agents.args["node1"] for a in agents.args.values())
    assert "--listen-port" not in agents.args["node1"] and "--peers" not in agents.args["node1"]
    assert probes.master == Unavailable("probes skipped")


# --------------------------------------------------------------------------------------- a scheduler


def test_a_node_the_scheduler_says_is_down_gets_no_task_and_carries_its_reason() -> None:
    why = "Slurm says node2 is DOWN: bad DIMM (set by root at 2026-12-04T10:00:00); no task was started there"
    agents = Agents()
    nodes = cluster("node1", "node2", "node3", agents=agents, scheduler=slurm_view({"node2": why}))
    facts, probes = surveyed(nodes)
    assert all("node2" not in call.hosts for call in nodes.calls)
    assert facts["node2"] == Unavailable(why)
    assert probes.clock_offset_s["node2"] == Unavailable("no task on this node")
    assert probes.unreachable_fixes == {"node2": "scontrol show node node2"}
    assert value_of(agents.args["node1"], "--listen-expect") == "2"
    assert isinstance(probes.slurm, SlurmFacts) and probes.slurm.version == "22.05.8"
    assert list(facts) == ["node1", "node2", "node3"]  # the hosts' order, whoever answered


def test_a_down_first_node_hands_the_master_probe_to_the_next() -> None:
    agents = Agents()
    nodes = cluster("node1", "node2", "node3", agents=agents, scheduler=slurm_view({"node1": "down"}))
    _facts, probes = surveyed(nodes)
    assert master_of(probes).host == "node2"
    assert [h for h, a in agents.args.items() if "--listen-port" in a] == ["node2"]


def test_when_the_scheduler_runs_nothing_no_task_is_started() -> None:
    nodes = cluster("node1", "node2", scheduler=slurm_view({"node1": "down", "node2": "down"}))
    facts, probes = surveyed(nodes)
    assert nodes.calls == []
    assert probes.master == Unavailable("no node runs tasks")
    assert facts == {"node1": Unavailable("down"), "node2": Unavailable("down")}


def test_progress_names_each_node_as_it_goes() -> None:
    seen: list[tuple[str, str, str]] = []

    class Listener:
        def update(self, host: str, state: str, detail: str = "") -> None:
            seen.append((host, state, detail))

    nodes = cluster("node1", "node2", "node3", scheduler=slurm_view({"node3": "drained: bad fan"}),
                    timeouts={"node2"})
    survey_nodes(nodes, SurveyOptions(), Listener())
    assert ("node3", "failed", "drained: bad fan") in seen
    assert ("node1", "collecting", "") in seen and ("node1", "ok", "") in seen
    assert [s for h, s, _ in seen if h == "node2"] == ["collecting", "failed"]


# ------------------------------------------------------------------------------------- this machine


def test_a_single_host_that_is_this_machine_is_read_in_process_without_the_transport(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(survey, "launch_place", lambda names: LaunchPlace(entry="node1", name="node1",
                                                                           local_only=True))
    nodes = cluster("node1")
    facts, probes = surveyed(nodes)
    assert nodes.calls == []
    assert facts == {"node1": HEAD_FACTS}
    assert probes.local_only and master_of(probes).address == "127.0.0.1"


def test_with_a_scheduler_even_this_machine_alone_goes_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(survey, "launch_place", lambda names: LaunchPlace(entry="node1", name="node1",
                                                                           local_only=True))
    nodes = cluster("node1", scheduler=slurm_view({}))
    _facts, probes = surveyed(nodes)
    assert [c.kind for c in nodes.calls] == ["run", "agent"]
    assert not probes.local_only


# ------------------------------------------------------------------------------------------- doctor


@pytest.fixture(scope="module")
def specs() -> Any:
    load_checks()
    return select_checks()


def findings_of(report: Any, check_id: str) -> list[tuple[str, str]]:
    return [(f.where, f.outcome.value) for f in report.findings if f.check_id == check_id]


def test_the_doctor_names_the_node_that_refused_with_its_fix(specs: Any) -> None:
    def agent(host: str, args: list[str]) -> Any:
        if host == "node2":
            refuses("node2: connection refused", fix="is sshd running on node2?")(host)
        return Agents()(host, args)

    nodes = FakeNodes(hosts_named("node1", "node2"), on_agent=agent, on_run=first_node_prints(ADDRESSES),
                      mesh=SshSettings())
    report, _probes = doctor_cluster(specs, nodes, SurveyOptions(), "hosts.txt")
    [problem] = [f for f in report.findings if f.check_id == "node-unreachable" and f.outcome.value == "fail"]
    assert (problem.where, problem.message, problem.fix) == (
        "node2", "node2: connection refused", "is sshd running on node2?")
    assert report.hosts == ["node1", "node2"] and report.hostfile == "hosts.txt"
    assert report.has_errors


def test_the_doctor_under_a_scheduler_names_its_job_and_judges_no_ssh(specs: Any) -> None:
    nodes = cluster("node1", "node2", "node3", mesh=None, scheduler=slurm_view({"node3": "down"}))
    report, _probes = doctor_cluster(specs, nodes, SurveyOptions())
    assert report.hostfile == "slurm job 42"
    assert [s for _, s in findings_of(report, "ssh-trust-incomplete")] == ["skip"]
    assert ("node3", "fail") in findings_of(report, "node-unreachable")


def test_the_doctor_on_a_healthy_fake_cluster_finds_every_node_reachable(specs: Any) -> None:
    nodes = cluster("node1", "node2", mesh=SshSettings())
    report, probes = doctor_cluster(specs, nodes, SurveyOptions(), "hosts.txt")
    assert [f for f in report.findings if f.check_id in ("node-unreachable", "master-unreachable")
            and f.outcome.value == "fail"] == []
    assert dataclasses.asdict(master_of(probes))["address"] == "10.0.0.1"
