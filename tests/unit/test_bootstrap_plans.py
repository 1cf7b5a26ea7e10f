"""What bootstrap decides before it touches a node: known_hosts lines to add, and how it reports."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from clusterkit.bootstrap.context import FAILED, OK, BootstrapContext, NodeOutcome, StepReport
from clusterkit.bootstrap.playbook import StepSpec
from clusterkit.bootstrap.ssh_steps import plan_known_hosts
from clusterkit.cli import build_parser
from clusterkit.cluster.remote import SshSettings
from clusterkit.core.inventory import parse_hostfile, select_hosts
from clusterkit.ui.bootstrap import summary_table


def blob(name: str) -> str:
    """A stand-in public key blob (base64), distinct per name."""
    return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()


def hashed(name: str) -> str:
    salt = b"0123456789abcdefghij"
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


WANTED = [(["node2", "10.0.0.12", "localhost", "127.0.0.1"], "ssh-ed25519", blob("node2")),
          (["node3", "10.0.0.13", "localhost", "127.0.0.1"], "ssh-ed25519", blob("node3"))]


def test_a_home_shared_by_two_nodes_knows_both_under_localhost() -> None:
    add, conflicts = plan_known_hosts("", WANTED)
    assert conflicts == []
    assert add == [f"node2,10.0.0.12,localhost,127.0.0.1 ssh-ed25519 {blob('node2')}",
                   f"node3,10.0.0.13,localhost,127.0.0.1 ssh-ed25519 {blob('node3')}"]
    assert plan_known_hosts("\n".join(add) + "\n", WANTED) == ([], [])


def test_hashed_entries_count_and_a_changed_key_is_a_conflict_not_an_addition() -> None:
    current = (f"{hashed('node2')} ssh-ed25519 {blob('node2')}\n"
               f"node3 ssh-ed25519 {blob('reinstalled-node3')}\n"
               f"10.0.0.13 ssh-rsa {blob('rsa-node3')}\n")
    add, conflicts = plan_known_hosts(current, WANTED)
    assert conflicts == ["node3"]
    assert add == [f"10.0.0.12,localhost,127.0.0.1 ssh-ed25519 {blob('node2')}",
                   f"10.0.0.13,localhost,127.0.0.1 ssh-ed25519 {blob('node3')}"]


def test_the_summary_names_the_failed_step_and_why_on_its_node() -> None:
    hosts = select_hosts(parse_hostfile("node1 slots=1\nnode2 slots=1\n", "hostfile"))
    ctx = BootstrapContext(hosts=hosts, settings=SshSettings(), python="/env/bin/python")
    step = {name: StepSpec(name, "", None, 60, 1) for name in ("reachability", "host-keys")}
    reports = [StepReport(step["reachability"], {"node1": NodeOutcome(OK), "node2": NodeOutcome(OK)}),
               StepReport(step["host-keys"], {"node1": NodeOutcome(OK),
                                              "node2": NodeOutcome(FAILED, error="host key of node2 CHANGED")},
                          aborted=True)]
    text = summary_table(ctx, reports).plain
    assert "  node2: FAILED host-keys; ok reachability; later steps not run (the run stopped at host-keys)" in text
    assert "      host-keys: host key of node2 CHANGED" in text
    assert "  node1: ok reachability, host-keys; later steps not run" in text


def test_a_relative_python_is_made_absolute_where_it_is_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 19, W6: the path goes to every node and into .deepspeed_env, where no cwd explains it.
    monkeypatch.chdir(tmp_path)
    for command in ("bootstrap", "doctor", "launch"):
        args = build_parser().parse_args([command, "hostfile", "--python", "envs/small/bin/python"])
        assert args.python == f"{tmp_path}/envs/small/bin/python", command
