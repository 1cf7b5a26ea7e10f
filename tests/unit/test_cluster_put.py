"""``Nodes.put`` where every node may read the file where it lies (``BroadcastOptions.in_place``), and
the line each transport says when a copy starts: on this machine for real, through Slurm with its srun
steps scripted (the real harness is tests/cluster/test_slurm.py); and node_env naming itself as the
head knows it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from clusterkit.cluster import slurm as slurm_nodes
from clusterkit.cluster.local import LocalNodes
from clusterkit.cluster.nodes import BroadcastOptions, ProgressListener
from clusterkit.cluster.remote.slurm import Allocation
from clusterkit.cluster.remote.transfer import RemoteFile
from clusterkit.cluster.result import CommandOutput, GroupResult, HostResult
from clusterkit.cluster.shell import node_command
from clusterkit.cluster.slurm import PUT_HAVE, PUT_NEED, PUT_NO_DIR, SlurmNodes
from clusterkit.cluster.target import this_machine
from clusterkit.envpack.pack import RESULT_MARKER, node_env_command
from clusterkit.node.facts import SlurmJobFacts


def remote_for(source: Path, path: Path) -> RemoteFile:
    data = source.read_bytes()
    return RemoteFile(str(path), len(data), hashlib.sha256(data).hexdigest())


def test_a_file_put_here_in_place_is_read_where_it_lies_and_nothing_is_copied(tmp_path: Path) -> None:
    source = tmp_path / "env.tar.zst"
    source.write_bytes(b"x" * 4096)
    said: list[str] = []
    nodes = LocalNodes(this_machine().hosts[0])
    put = nodes.put(source, remote_for(source, tmp_path / "stage" / "env.tar.zst"), 30,
                    options=BroadcastOptions(in_place=True, phase=said.append))
    (delivery,) = put.succeeded.values()
    assert delivery.ok and delivery.path == str(source.resolve()) and delivery.sent_bytes == 0
    assert not (tmp_path / "stage").exists()
    assert said == [f"{source.resolve()} read where it lies (this machine): nothing copied"]


def test_a_file_put_here_without_in_place_is_copied_as_asked(tmp_path: Path) -> None:
    source = tmp_path / "env.tar.zst"
    source.write_bytes(b"x" * 4096)
    said: list[str] = []
    nodes = LocalNodes(this_machine().hosts[0])
    put = nodes.put(source, remote_for(source, tmp_path / "stage" / "env.tar.zst"), 30,
                    options=BroadcastOptions(phase=said.append))
    (delivery,) = put.succeeded.values()
    assert delivery.path is None and (tmp_path / "stage" / "env.tar.zst").read_bytes() == source.read_bytes()
    assert said == [f"copy {source} to {tmp_path / 'stage' / 'env.tar.zst'} on this machine"]


def test_node_env_names_itself_as_the_head_knows_it_whatever_the_transport(tmp_path: Path) -> None:
    spec = {"op": "forget", "prefix": str(tmp_path / "envs" / "ck"), "run": "r1"}
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / ".clusterkit-shared-r1-gpu07").write_text("gpu07")
    env = {k: v for k, v in os.environ.items() if k != "SLURMD_NODENAME"}
    done = subprocess.run(["/bin/sh", "-c", node_command("gpu07", node_env_command("python3", spec))],
                          capture_output=True, text=True, check=True, env={**env, "SLURMD_NODENAME": "other"})
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_MARKER))
    assert json.loads(line[len(RESULT_MARKER):])["seen"]["prefix"] == ["gpu07"]
    assert not (tmp_path / "envs" / ".clusterkit-shared-r1-gpu07").exists()  # its own token, by that name


class ScriptedSlurm(SlurmNodes):
    """SlurmNodes whose srun steps answer from a script (each node: what its probe says, whether its
    sbcast copy is good), and whose sbcast is recorded, not run."""

    def __init__(self, nodes: list[str], answers: dict[str, str], sees: set[str], good: set[str],
                 dead: frozenset[str] = frozenset()) -> None:
        super().__init__(Allocation(SlurmJobFacts("42", "batch", nodes, None, None, None)), environ={})
        self.answers, self.sees, self.good, self.dead = answers, sees, good, set(dead)
        self.steps: list[tuple[str, list[str]]] = []

    def run(self, command: str, timeout_s: float, *, hosts: Sequence[str] | None = None,
            progress: ProgressListener | None = None) -> GroupResult[CommandOutput]:
        chosen = list(hosts or [])
        kind = "probe" if "@@ck-put" in command else "settle" if "sha256sum < \"$s\"" in command else \
            "mkdir" if command.startswith("mkdir") else "clean"
        self.steps.append((kind, chosen))
        group: GroupResult[CommandOutput] = GroupResult()
        for host in chosen:
            if host in self.dead:
                group[host] = HostResult(host, error=f"srun on {host}: no answer within {timeout_s:g}s")
            elif kind == "probe":
                seen = "1000 7" if host in self.sees else ""
                group[host] = HostResult(host, value=CommandOutput(
                    0, f"@@ck-put {self.answers.get(host, PUT_NEED)}\n@@ck-put-sees {seen}\n"))
            elif kind == "settle":
                group[host] = HostResult(host, value=CommandOutput(0, "placed" if host in self.good else "bad"))
            else:
                group[host] = HostResult(host, value=CommandOutput(0))
        return group


@pytest.fixture
def sbcasts(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    sent: list[list[str]] = []

    def sbcast(argv: Sequence[str], timeout_s: float, environ: Mapping[str, str] | None = None) -> str:
        sent.append(list(argv))
        return ""

    monkeypatch.setattr(slurm_nodes, "slurm_command", sbcast)
    return sent


def archive(tmp_path: Path) -> tuple[Path, RemoteFile]:
    source = tmp_path / "env.tar.zst"
    source.write_bytes(b"x" * 1000)
    os.utime(source, (7, 7))
    return source, remote_for(source, Path("/stage/env.tar.zst"))


def test_sbcast_is_skipped_when_every_node_needing_the_file_reads_it_where_it_lies(
        tmp_path: Path, sbcasts: list[list[str]]) -> None:
    source, remote = archive(tmp_path)
    nodes = ScriptedSlurm(["n1", "n2", "n3"], {"n1": PUT_HAVE}, sees={"n2", "n3"}, good=set())
    said: list[str] = []
    put = nodes.put(source, remote, 60, hosts=["n1", "n2", "n3"], options=BroadcastOptions(in_place=True,
                                                                                             phase=said.append))
    assert sbcasts == []
    assert {h: d.path for h, d in put.succeeded.items()} == {"n1": None, "n2": str(source.resolve()),
                                                             "n3": str(source.resolve())}
    assert said == [f"archive read where it lies: {source.resolve()} (nodes see it, same size and time): "
                    "nothing sent"]


def test_one_node_that_does_not_see_the_file_makes_it_go_by_sbcast_checked_on_each(
        tmp_path: Path, sbcasts: list[list[str]]) -> None:
    source, remote = archive(tmp_path)
    nodes = ScriptedSlurm(["n1", "n2", "n3"], {}, sees={"n2"}, good={"n2"})
    put = nodes.put(source, remote, 60, hosts=["n2", "n3"], options=BroadcastOptions(in_place=True))
    assert [argv[0] for argv in sbcasts] == ["sbcast"] and sbcasts[0][-1] == "/stage/env.tar.zst.ck-sbcast"
    assert put["n2"].ok and put["n2"].value is not None and put["n2"].value.path is None
    assert put["n2"].value.notes == [f"sbcast copy checked (sha256 {remote.sha256[:16]}...)"]
    assert not put["n3"].ok and "sbcast left no good copy of /stage/env.tar.zst on n3" in str(put["n3"].error)
    # the node not asked for got the directory sbcast writes into, and its scratch copy removed after
    assert ("mkdir", ["n1"]) in nodes.steps and nodes.steps[-1] == ("clean", ["n1"])


def test_a_node_that_cannot_write_the_directory_is_named_and_a_dead_bystander_holds_nothing_up(
        tmp_path: Path, sbcasts: list[list[str]]) -> None:
    source, remote = archive(tmp_path)
    nodes = ScriptedSlurm(["n1", "n2", "n3"], {"n2": PUT_NO_DIR}, sees=set(), good={"n3"}, dead=frozenset({"n1"}))
    put = nodes.put(source, remote, 60, hosts=["n2", "n3"])
    assert put["n2"].error == "cannot create /stage on n2 (writable by this user?)"
    assert put["n3"].ok
    assert ("clean", []) not in nodes.steps and all("n1" not in hosts for kind, hosts in nodes.steps
                                                     if kind == "clean")
