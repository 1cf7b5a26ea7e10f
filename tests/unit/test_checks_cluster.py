"""Cluster-wide checks judged on views of several nodes, the launching machine in or out of the hostfile."""

from __future__ import annotations

import dataclasses

from clusterkit.checks import load_checks
from clusterkit.checks.registry import REGISTRY, ClusterView, run_cluster_checks
from clusterkit.core.findings import Finding, Outcome, Severity
from clusterkit.core.inventory import parse_hostfile, select_hosts
from clusterkit.doctor import judge_cluster
from clusterkit.node.facts import ClusterProbes, Maybe, NodeFacts, SshTrustFacts, Unavailable
from tests.factories import dsenv_file, healthy_gpu_node, make_host, make_launcher, make_network, make_nic

KEY = {name: f"SHA256:user-{name}" for name in ("node1", "node2", "node3")}
SERVED = {name: f"SHA256:host-{name}" for name in ("node1", "node2", "node3")}


def node(name: str, address: str, **launcher: object) -> NodeFacts:
    network = make_network(0, nics=[make_nic("lo"), make_nic("eth0", ipv4=[f"{address}/24"])])
    return dataclasses.replace(healthy_gpu_node(), host=make_host(name), network=network,
                               launcher=make_launcher(**launcher))


NOT_COLLECTED = Unavailable("not collected")


def view(hostfile: str, nodes: dict[str, Maybe[NodeFacts]], *, head: str = "node1", in_hostfile: bool = True,
         launch: Maybe[NodeFacts] = NOT_COLLECTED) -> ClusterView:
    hosts = select_hosts(parse_hostfile(hostfile, "hostfile"))
    probes = ClusterProbes(head=head, clock_offset_s={}, ssh_mesh={}, master=Unavailable("not probed"),
                           head_in_hostfile=in_hostfile, launch_facts=launch)
    return ClusterView(hosts=hosts, nodes=nodes, probes=probes, hostfile="hostfile")


def failed(check_id: str, cluster: ClusterView) -> list[Finding]:
    load_checks()
    return [f for f in run_cluster_checks([REGISTRY[check_id]], cluster) if f.outcome is Outcome.FAIL]


def test_one_machine_listed_twice_is_an_error_naming_both_lines() -> None:
    same = node("node2", "10.0.0.12")
    found = failed("hostfile-duplicate-machine", view("node2 slots=1\n10.0.0.12 slots=1\nnode3 slots=1\n", {
        "node2": same, "10.0.0.12": same, "node3": node("node3", "10.0.0.13")}))
    assert [(f.message, f.where) for f in found] == [
        ("node2 and 10.0.0.12 are the same machine, node2 (10.0.0.12)", "hostfile:1, hostfile:2")]


def test_different_machines_are_not_duplicates() -> None:
    assert failed("hostfile-duplicate-machine", view("node2 slots=1\nnode3 slots=1\n", {
        "node2": node("node2", "10.0.0.12"), "node3": node("node3", "10.0.0.13")})) == []


def trust(name: str, served: list[str], known: dict[str, list[str]]) -> SshTrustFacts:
    return SshTrustFacts(user_keys=[KEY[name]], authorized_keys=list(KEY.values()), host_keys=served,
                         known_hosts=known)


def test_ssh_trust_holds_when_known_hosts_has_the_key_sshd_serves() -> None:
    known = {peer: [SERVED[peer]] for peer in SERVED}
    nodes: dict[str, Maybe[NodeFacts]] = {
        name: node(name, f"10.0.0.1{i}", ssh_trust=trust(name, [SERVED[name]], known))
        for i, name in enumerate(SERVED, start=1)}
    assert failed("ssh-trust-incomplete", view("node1 slots=1\nnode2 slots=1\nnode3 slots=1\n", nodes)) == []
    stale = dict(known, node3=["SHA256:old-node3"])
    nodes["node1"] = node("node1", "10.0.0.11", ssh_trust=trust("node1", [SERVED["node1"]], stale))
    found = failed("ssh-trust-incomplete", view("node1 slots=1\nnode2 slots=1\nnode3 slots=1\n", nodes))
    assert [f.message for f in found] == ["~/.ssh/known_hosts on node1 holds a different host key for node3 "
                                          "(`REMOTE HOST IDENTIFICATION HAS CHANGED`)"]


def test_a_login_node_without_the_nodes_deepspeed_env_is_told_once() -> None:
    lines = ["PATH=/opt/env/bin:/usr/bin", "NCCL_SOCKET_IFNAME=eth0"]
    files = [dsenv_file(lines, "/home/u/.deepspeed_env")]
    nodes: dict[str, Maybe[NodeFacts]] = {n: node(n, f"10.0.0.1{i}", deepspeed_env_files=files)
                                          for i, n in enumerate(("node2", "node3"), start=2)}
    login = node("login", "10.0.0.5", deepspeed_env_files=[dsenv_file(None, "/home/u/.deepspeed_env")])
    found = failed("dsenv-inconsistent", view("node2 slots=1\nnode3 slots=1\n", nodes, head="login",
                                              in_hostfile=False, launch=login))
    assert [(f.host, f.where) for f in found] == [("login", "login:~/.deepspeed_env")]
    assert "DeepSpeed sends only the launching machine's" in found[0].message
    same = node("login", "10.0.0.5", deepspeed_env_files=files)
    assert failed("dsenv-inconsistent", view("node2 slots=1\nnode3 slots=1\n", nodes, head="login",
                                             in_hostfile=False, launch=same)) == []


def test_nccl_socket_ifname_is_read_from_the_launching_machine() -> None:
    files = [dsenv_file(["NCCL_SOCKET_IFNAME=ib0"], "/home/u/.deepspeed_env")]
    login = dataclasses.replace(node("login", "10.0.0.5", deepspeed_env_files=files), env_vars={})
    nodes: dict[str, Maybe[NodeFacts]] = {"node2": node("node2", "10.0.0.12")}
    found = failed("nccl-socket-ifname-unmatched", view("node2 slots=1\n", nodes, head="login", in_hostfile=False,
                                                        launch=login))
    assert [f.host for f in found] == ["node2"]
    assert "NCCL_SOCKET_IFNAME=ib0" in found[0].message


def test_a_training_script_missing_on_a_node_is_an_error_naming_it() -> None:
    # issue 19, M5: the launch directory exists everywhere, the script only on some nodes.
    nodes: dict[str, Maybe[NodeFacts]] = {
        "node2": node("node2", "10.0.0.12", cwd="/work", cwd_exists=True, script="train.py", script_exists=True),
        "node3": node("node3", "10.0.0.13", cwd="/work", cwd_exists=True, script="train.py", script_exists=False),
        "node4": node("node4", "10.0.0.14", cwd="/work", cwd_exists=False, script="train.py", script_exists=False)}
    found = failed("code-path-missing", view("node2 slots=1\nnode3 slots=1\nnode4 slots=1\n", nodes))
    assert [(f.host, f.message) for f in found] == [
        ("node3", "training script /work/train.py does not exist on node3: DeepSpeed's ranks there stop with "
                  "`can't open file`"),
        ("node4", "launch directory /work does not exist on node4")]
    assert found[0].where == "node3:/work/train.py"


def test_no_script_named_leaves_only_the_launch_directory_to_judge() -> None:
    nodes: dict[str, Maybe[NodeFacts]] = {"node2": node("node2", "10.0.0.12", cwd="/work", cwd_exists=True)}
    assert failed("code-path-missing", view("node2 slots=1\n", nodes)) == []


def test_node_checks_judge_the_shell_environment_under_what_the_launching_machine_exports() -> None:
    # issue 19, M8: pdsh runs `export NCCL_SOCKET_IFNAME=eth0; ...` after node2's ~/.bashrc set ib9.
    load_checks()
    node2 = dataclasses.replace(node("node2", "10.0.0.12", deepspeed_env_files=[]),
                                env_vars={"NCCL_SOCKET_IFNAME": "ib9"})
    exported = [dsenv_file(["NCCL_SOCKET_IFNAME=eth0"], "/home/u/.deepspeed_env")]
    login = dataclasses.replace(node("login", "10.0.0.5", deepspeed_env_files=exported), env_vars={})
    cluster = view("node2 slots=1\n", {"node2": node2}, head="login", in_hostfile=False, launch=login)
    assert cluster.probes is not None
    report = judge_cluster([REGISTRY["nccl-socket-ifname-missing"]], list(cluster.hosts), dict(cluster.nodes),
                           cluster.probes, 0.0, "hostfile")
    assert [(f.host, f.severity, f.outcome) for f in report.findings] == [("node2", Severity.WARNING, Outcome.FAIL)]
    assert "matters only to programs started outside DeepSpeed's launcher" in report.findings[0].message
    unknown = dataclasses.replace(cluster.probes, launch_facts=Unavailable("timed out"))
    report = judge_cluster([REGISTRY["nccl-socket-ifname-missing"]], list(cluster.hosts), dict(cluster.nodes),
                           unknown, 0.0, "hostfile")
    assert [(f.host, f.severity) for f in report.findings] == [("node2", Severity.ERROR)]
