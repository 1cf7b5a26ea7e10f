"""env push and verify over a stand-in Nodes: every path of the orchestration in milliseconds.

Each node is scripted by what its node_env answers (the survey, unpack, verify it would run) and by how
it answers (refuses, never answers, answers too late, has no room); the cluster tests prove the same on
real sshd and slurmd. Each test names the item of the field-test issue it guards, where it guards one.
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clusterkit.cluster import CommandOutput
from clusterkit.cluster.remote import RemoteError
from clusterkit.cluster.remote.transfer import Delivery, HopEvent, RemoteFile
from clusterkit.envpack.pack import RESULT_MARKER, Manifest
from clusterkit.envpack.push import (
    FAILED,
    INSTALLED,
    SHARED,
    UP_TO_DATE,
    WOULD_INSTALL,
    PushOptions,
    PushReport,
    push_env,
    staging_path,
)
from clusterkit.errors import UsageError
from clusterkit.node import env_unpack as node_env
from tests.fake_nodes import FakeNodes, hosts_named

PACKAGES = {"python": "p" * 64, "python_count": 3, "conda": "c" * 64}


def make_manifest(tmp_path: Path) -> tuple[Path, Manifest]:
    archive = tmp_path / "ck-1.tar.zst"
    archive.write_bytes(b"z" * 1000)
    manifest = Manifest(kind="conda", prefix=str(tmp_path / "envs" / "ck"), archive=archive.name, size=1000,
                        sha256="a" * 64, unpacked_bytes=5000, files=10, python_version="3.11.9",
                        package_set=PACKAGES, imports={"torch": "2.3.0"}, fingerprint="f")
    return archive, manifest


def env_answer(manifest: Manifest, **changes: Any) -> dict[str, Any]:
    """What the env's own python says of itself where it is this env (verify, and the survey's check)."""
    return {"prefix": manifest.prefix, "python": manifest.python_version,
            "python_packages": {"sha256": PACKAGES["python"], "count": 3}, "conda": PACKAGES["conda"],
            "imports": {"torch": {"version": "2.3.0"}}, **changes}


@dataclass
class Node:
    """One scripted node: what is at its prefix, its room, who shares its directories, how it answers."""

    state: str = node_env.ABSENT
    installed: dict[str, Any] | None = None
    env: dict[str, Any] | None = None
    free: int = 10**9
    #: Other hosts seeing the same directory beside the prefix / the same staging directory.
    shares_prefix: list[str] = field(default_factory=list)
    shares_staging: list[str] = field(default_factory=list)
    #: node_env operations this node never answers in time ("unpack", "verify"...).
    late: set[str] = field(default_factory=set)
    refuses: bool = False
    verify: dict[str, Any] | None = None


@dataclass
class World:
    """The nodes of one test behind a FakeNodes, and every node_env operation they ran."""

    manifest: Manifest
    nodes: dict[str, Node]
    ops: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    put_results: dict[str, Delivery] = field(default_factory=dict)

    def fake(self) -> FakeNodes:
        return FakeNodes(hosts_named(*self.nodes), on_run=self.answer, on_put=self.put)

    def answer(self, host: str, command: str) -> CommandOutput:
        spec = json.loads(base64.b64decode(shlex.split(command)[-1]))
        node = self.nodes[host]
        assert "host" not in spec  # one command for every node: each fills in its own name
        if node.refuses:
            raise RemoteError(f"{host}: connection refused", fix=f"is sshd running on {host}?")
        if spec["op"] in node.late:
            raise RemoteError(f"{host} gave no answer within 900s", fix=f"look at {host}")
        self.ops.append((host, spec["op"], spec))
        result = getattr(self, spec["op"])(host, node, spec)
        return CommandOutput(0, f"noise\n{RESULT_MARKER}{json.dumps(result)}\n")

    def survey(self, host: str, node: Node, spec: dict[str, Any]) -> dict[str, Any]:
        answer = {"at_prefix": {"state": node.state, "what": "a directory", "sample": ["notes.txt"]},
                  "installed": node.installed, "parent": str(Path(self.manifest.prefix).parent), "writable": True,
                  "free": node.free, "fs": 1, "tar": "/usr/bin/tar", "zstd": "/usr/bin/zstd", "base_python": None,
                  "staging": {"dir": spec["staging"], "writable": True, "free": node.free, "fs": 1},
                  "seen": {"prefix": [host, *node.shares_prefix], "staging": [host, *node.shares_staging]}}
        if node.state in (node_env.CLUSTERKIT, node_env.FOREIGN):
            answer["env"] = node.env if node.env is not None else env_answer(self.manifest)
        return answer

    def forget(self, host: str, node: Node, spec: dict[str, Any]) -> dict[str, Any]:
        return {"seen": {"prefix": [], "staging": []}}

    def unpack(self, host: str, node: Node, spec: dict[str, Any]) -> dict[str, Any]:
        if node.state == node_env.FOREIGN and not spec["replace_existing"]:
            return {"ok": False, "error": "not replaced", "refused": True}
        return {"ok": True, "seconds": 1.5, "notes": []}

    def verify(self, host: str, node: Node, spec: dict[str, Any]) -> dict[str, Any]:
        return node.verify if node.verify is not None else env_answer(self.manifest)

    def discard(self, host: str, node: Node, spec: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    def put(self, host: str, remote: RemoteFile) -> Delivery:
        return self.put_results.get(host) or Delivery(host, ok=True, sent_bytes=remote.size, rounds=1)

    def ran(self, op: str) -> list[str]:
        return [host for host, done, _ in self.ops if done == op]


def this_env(manifest: Manifest) -> dict[str, Any]:
    """The marker clusterkit leaves in an env it unpacked from this archive."""
    return {"sha256": manifest.sha256, "package_set": manifest.package_set}


class Stages:
    """A PushProgress that keeps what it was told."""

    def __init__(self) -> None:
        self.phases: list[str] = []

    def phase(self, text: str) -> None:
        self.phases.append(text)

    def hop(self, event: HopEvent) -> None:
        pass

    def round(self, number: int, chain: list[str], offset: int) -> None:
        pass


def push(tmp_path: Path, nodes: dict[str, Node], **options: Any) -> tuple[PushReport, World, FakeNodes]:
    archive, manifest = make_manifest(tmp_path)
    world = World(manifest, nodes)
    fake = world.fake()
    report = push_env(archive, manifest, fake, PushOptions(**options), Stages())
    return report, world, fake


def statuses(report: PushReport) -> dict[str, str]:
    return {host: result.status for host, result in report.nodes.items()}


def puts(fake: FakeNodes) -> list[list[str]]:
    return [call.hosts for call in fake.calls if call.kind == "put"]


def test_fresh_nodes_get_the_archive_once_each_then_unpack_and_verify(tmp_path: Path) -> None:
    report, world, fake = push(tmp_path, {"n1": Node(), "n2": Node()})
    assert statuses(report) == {"n1": INSTALLED, "n2": INSTALLED}
    assert puts(fake) == [["n1", "n2"]]
    assert world.ran("unpack") == ["n1", "n2"] and world.ran("verify") == ["n1", "n2"]
    unpack = next(spec for _, op, spec in world.ops if op == "unpack")
    assert unpack["archive"] == staging_path(world.manifest, PushOptions())
    actions = " ".join(report.nodes["n1"].actions)
    assert "archive there (1.0 KB sent, round 1)" in actions and "verified: python 3.11.9" in actions
    assert "torch 2.3.0 import" in actions


def test_a_node_that_refuses_is_named_with_its_fix_and_the_others_are_installed(tmp_path: Path) -> None:
    report, _, fake = push(tmp_path, {"n1": Node(), "n2": Node(refuses=True)})
    assert statuses(report) == {"n1": INSTALLED, "n2": FAILED}
    assert report.nodes["n2"].error == "n2: connection refused"
    assert report.nodes["n2"].fix == "is sshd running on n2?"
    assert puts(fake) == [["n1"]]


def test_a_node_that_never_answers_fails_alone(tmp_path: Path) -> None:
    archive, manifest = make_manifest(tmp_path)
    world = World(manifest, {"n1": Node(), "n2": Node()})
    fake = world.fake()
    fake.timeouts.add("n2")
    report = push_env(archive, manifest, fake, PushOptions())
    assert statuses(report) == {"n1": INSTALLED, "n2": FAILED}
    assert "gave no answer" in str(report.nodes["n2"].error)
    assert puts(fake) == [["n1"]] and world.ran("unpack") == ["n1"]


def test_a_node_whose_unpack_answers_too_late_fails_and_is_not_verified(tmp_path: Path) -> None:
    report, world, _ = push(tmp_path, {"n1": Node(), "n2": Node(late={"unpack"})})
    assert statuses(report) == {"n1": INSTALLED, "n2": FAILED}
    assert report.nodes["n2"].error == "n2 gave no answer within 900s"
    assert world.ran("verify") == ["n1"]


def test_a_node_whose_verify_answers_too_late_fails_with_why(tmp_path: Path) -> None:
    report, _, _ = push(tmp_path, {"n1": Node(late={"verify"})})
    assert statuses(report) == {"n1": FAILED}
    assert "does not run on n1: n1 gave no answer within 900s" in str(report.nodes["n1"].error)


def test_a_node_without_room_is_named_with_the_space_needed_and_sent_nothing(tmp_path: Path) -> None:
    report, world, fake = push(tmp_path, {"n1": Node(), "n2": Node(free=100)})
    assert statuses(report) == {"n1": INSTALLED, "n2": FAILED}
    assert str(report.nodes["n2"].error).startswith("no space on n2:")
    assert "free " in str(report.nodes["n2"].fix)
    assert puts(fake) == [["n1"]] and "n2" not in world.ran("unpack")


def test_a_node_that_already_holds_the_env_is_left_alone(tmp_path: Path) -> None:
    _, manifest = make_manifest(tmp_path)
    report, world, fake = push(tmp_path, {"n1": Node(node_env.CLUSTERKIT, this_env(manifest)), "n2": Node()})
    assert statuses(report) == {"n1": UP_TO_DATE, "n2": INSTALLED}
    assert "holds this env: its files, package set and Python checked" in report.nodes["n1"].actions[0]
    assert puts(fake) == [["n2"]] and world.ran("unpack") == ["n2"] and world.ran("verify") == ["n2"]


def test_a_copy_broken_under_its_marker_is_reinstalled(tmp_path: Path) -> None:
    # issue 19, W1: a marker alone said "up to date" over an env whose python no longer started
    _, manifest = make_manifest(tmp_path)
    broken = Node(node_env.CLUSTERKIT, this_env(manifest), env={"error": "bin/python does not start"})
    report, world, _ = push(tmp_path, {"n1": broken})
    assert statuses(report) == {"n1": INSTALLED}
    assert "reinstall: bin/python does not start" in report.nodes["n1"].actions
    assert world.ran("unpack") == ["n1"]


def test_verify_names_a_broken_copy_and_the_push_that_reinstalls_it(tmp_path: Path) -> None:
    # issue 19, W1
    archive, manifest = make_manifest(tmp_path)
    world = World(manifest, {"n1": Node(node_env.CLUSTERKIT, this_env(manifest),
                                        env=env_answer(manifest, python="3.10.1"))})
    report = push_env(archive, manifest, world.fake(), PushOptions(verify_only=True))
    assert statuses(report) == {"n1": FAILED}
    assert "is not this env: Python 3.10.1, the head's env has 3.11.9" in str(report.nodes["n1"].error)
    assert report.nodes["n1"].fix == f"clusterkit env push HOSTFILE {archive} (reinstalls it on n1)"
    assert world.ran("unpack") == []


def test_verify_through_slurm_names_the_push_that_reaches_the_nodes_that_way(tmp_path: Path) -> None:
    archive, manifest = make_manifest(tmp_path)
    world = World(manifest, {"n1": Node()})
    report = push_env(archive, manifest, world.fake(),
                      PushOptions(verify_only=True, push_command="clusterkit env push --slurm ARCHIVE"))
    assert report.nodes["n1"].fix == f"clusterkit env push --slurm {archive} (installs it on n1)"


def test_an_env_whose_imports_fail_though_it_is_whole_points_outside_the_env(tmp_path: Path) -> None:
    archive, manifest = make_manifest(tmp_path)
    world = World(manifest, {"n1": Node(node_env.CLUSTERKIT, this_env(manifest),
                                        verify=env_answer(manifest, imports={"torch": {"error": "libcuda.so"}}))})
    report = push_env(archive, manifest, world.fake(), PushOptions(verify_only=True))
    assert statuses(report) == {"n1": FAILED}
    assert "import torch fails: libcuda.so" in str(report.nodes["n1"].error)
    assert "look outside the env on n1" in str(report.nodes["n1"].fix)


def test_a_directory_clusterkit_did_not_install_is_refused_unless_asked_then_replaced(tmp_path: Path) -> None:
    # issue 19, W2
    foreign = {"error": "no bin/python"}
    report, world, fake = push(tmp_path, {"n1": Node(node_env.FOREIGN, env=foreign)})
    assert statuses(report) == {"n1": FAILED}
    assert "holds a directory (notes.txt...) that clusterkit did not install" in str(report.nodes["n1"].error)
    assert "--replace-existing" in str(report.nodes["n1"].fix)
    assert puts(fake) == [] and world.ran("unpack") == []
    replaced, world, _ = push(tmp_path, {"n1": Node(node_env.FOREIGN, env=foreign)}, replace_existing=True)
    assert statuses(replaced) == {"n1": INSTALLED}
    assert next(spec for _, op, spec in world.ops if op == "unpack")["replace_existing"] is True


def test_nodes_sharing_the_prefixs_directory_install_it_once_and_all_verify(tmp_path: Path) -> None:
    # issue 19, W3
    nodes = {"n1": Node(shares_prefix=["n2"]), "n2": Node(shares_prefix=["n1"]), "n3": Node()}
    report, world, fake = push(tmp_path, nodes)
    assert statuses(report) == {"n1": INSTALLED, "n2": SHARED, "n3": INSTALLED}
    assert "is shared with n1: installed once, through it" in report.nodes["n2"].actions[0]
    assert puts(fake) == [["n1", "n3"]] and world.ran("unpack") == ["n1", "n3"]
    assert sorted(world.ran("verify")) == ["n1", "n2", "n3"]


def test_a_node_sharing_the_prefix_of_one_that_failed_fails_with_it(tmp_path: Path) -> None:
    nodes = {"n1": Node(shares_prefix=["n2"], late={"unpack"}), "n2": Node(shares_prefix=["n1"])}
    report, _, _ = push(tmp_path, nodes)
    assert statuses(report) == {"n1": FAILED, "n2": FAILED}
    assert report.nodes["n2"].error == f"n1, which installs the shared {report_prefix(tmp_path)}, failed"


def report_prefix(tmp_path: Path) -> str:
    return str(tmp_path / "envs" / "ck")


def test_a_staging_directory_shared_by_nodes_gets_the_archive_once_and_each_unpacks_it(tmp_path: Path) -> None:
    # issue 19, W3: every hop wrote one .partial in the shared --staging
    nodes = {"n1": Node(shares_staging=["n2"]), "n2": Node(shares_staging=["n1"])}
    report, world, fake = push(tmp_path, nodes, staging_dir="/scratch/stage")
    assert statuses(report) == {"n1": INSTALLED, "n2": INSTALLED}
    assert puts(fake) == [["n1"]]
    assert "/scratch/stage is shared with n1: the archive was sent there once" in report.nodes["n2"].actions
    assert world.ran("unpack") == ["n1", "n2"]
    assert {spec["archive"] for _, op, spec in world.ops if op == "unpack"} == {"/scratch/stage/ck-1.tar.zst"}


def test_an_archive_every_node_reads_where_it_lies_is_unpacked_from_there_and_never_discarded(
        tmp_path: Path) -> None:
    archive, manifest = make_manifest(tmp_path)
    world = World(manifest, {"n1": Node(), "n2": Node()})
    note = f"{archive} is on a filesystem shared with this machine: read in place, nothing sent"
    world.put_results = {h: Delivery(h, ok=True, notes=[note], path=str(archive)) for h in ("n1", "n2")}
    report = push_env(archive, manifest, world.fake(), PushOptions(remove_archive=True))
    assert statuses(report) == {"n1": INSTALLED, "n2": INSTALLED}
    assert {spec["archive"] for _, op, spec in world.ops if op == "unpack"} == {str(archive)}
    assert note in report.nodes["n1"].actions
    assert not any("archive there" in a for a in report.nodes["n1"].actions)
    assert world.ran("discard") == []


def test_remove_archive_discards_each_staged_copy_once_unpacked(tmp_path: Path) -> None:
    report, world, _ = push(tmp_path, {"n1": Node(), "n2": Node(late={"unpack"})}, remove_archive=True)
    assert statuses(report) == {"n1": INSTALLED, "n2": FAILED}
    assert world.ran("discard") == ["n1"]  # n2's copy stays for a rerun


def test_a_node_the_archive_did_not_reach_fails_with_the_transports_reason(tmp_path: Path) -> None:
    archive, manifest = make_manifest(tmp_path)
    world = World(manifest, {"n1": Node(), "n2": Node()})
    world.put_results = {"n2": Delivery("n2", ok=False, error="sbcast left no good copy", fix="room on n2?")}
    report = push_env(archive, manifest, world.fake(), PushOptions())
    assert statuses(report) == {"n1": INSTALLED, "n2": FAILED}
    assert report.nodes["n2"].error == "sbcast left no good copy"
    assert world.ran("unpack") == ["n1"]


def test_a_dry_run_surveys_and_says_what_it_would_do(tmp_path: Path) -> None:
    report, world, fake = push(tmp_path, {"n1": Node()}, dry_run=True)
    assert statuses(report) == {"n1": WOULD_INSTALL}
    assert report.nodes["n1"].actions == [f"would send 1.0 KB and unpack to {report_prefix(tmp_path)}"]
    assert puts(fake) == [] and world.ran("unpack") == [] and world.ran("verify") == []


def test_a_push_to_some_of_the_nodes_touches_only_those(tmp_path: Path) -> None:
    archive, manifest = make_manifest(tmp_path)
    world = World(manifest, {"n1": Node(), "n2": Node(), "n3": Node()})
    report = push_env(archive, manifest, world.fake(), PushOptions(), hosts=["n3"])
    assert statuses(report) == {"n3": INSTALLED}
    assert {host for host, _, _ in world.ops} == {"n3"}


def test_every_stage_is_told_to_the_progress_listener(tmp_path: Path) -> None:
    archive, manifest = make_manifest(tmp_path)
    stages = Stages()
    push_env(archive, manifest, World(manifest, {"n1": Node()}).fake(), PushOptions(), stages)
    assert [p.split(" ")[0] for p in stages.phases] == ["survey:", "unpack", "verify"]


def test_an_archive_cut_short_on_the_head_is_a_usage_error_before_any_node_is_asked(tmp_path: Path) -> None:
    archive, manifest = make_manifest(tmp_path)
    archive.write_bytes(b"z" * 10)
    fake = World(manifest, {"n1": Node()}).fake()
    with pytest.raises(UsageError, match="cut short or changed"):
        push_env(archive, manifest, fake, PushOptions())
    assert fake.calls == []
