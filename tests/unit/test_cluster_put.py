"""``Nodes.put`` where every node may read the file where it lies (``BroadcastOptions.in_place``), and
the line each transport says when a copy starts; and node_env naming itself as the head knows it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from clusterkit.cluster.local import LocalNodes
from clusterkit.cluster.nodes import BroadcastOptions
from clusterkit.cluster.shell import node_command
from clusterkit.cluster.target import this_machine
from clusterkit.envpack.pack import RESULT_MARKER, node_env_command
from clusterkit.remote.transfer import RemoteFile


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
