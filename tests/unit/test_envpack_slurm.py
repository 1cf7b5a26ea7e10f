"""env push through Slurm, its pure parts: the probe each node runs before sbcast (by a real shell here:
whether it holds the file, can write its directory, sees the head's archive where it lies), node_env
filling in each node's own name in a step's one spec."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from clusterkit.cli import main
from clusterkit.cluster.remote.transfer import RemoteFile
from clusterkit.cluster.slurm import PUT_HAVE, PUT_NEED, PUT_NO_DIR, put_probe_command, read_put_probe
from clusterkit.envpack.pack import node_env_command
from clusterkit.errors import ExitCode


def run_shell(command: str, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    return done.stdout.splitlines()


def probe(tmp_path: Path, source: Path, target: Path, content: bytes = b"x" * 1234) -> tuple[str, bool]:
    remote = RemoteFile(str(target), len(content), hashlib.sha256(content).hexdigest())
    stat = source.stat() if source.exists() else None
    lines = run_shell(put_probe_command(remote, str(source)))
    return read_put_probe("\n".join(lines), stat.st_size if stat else 0, int(stat.st_mtime) if stat else 0)


def test_a_node_that_sees_the_heads_archive_with_its_size_and_time_may_read_it_in_place(tmp_path: Path) -> None:
    archive = tmp_path / "env.tar.zst"
    archive.write_bytes(b"x" * 1234)
    stat = archive.stat()
    lines = "\n".join(run_shell(put_probe_command(RemoteFile(str(tmp_path / "staging" / "e"), 1, "0"), str(archive))))
    assert (tmp_path / "staging").is_dir()
    assert read_put_probe(lines, 1234, int(stat.st_mtime)) == (PUT_NEED, True)
    assert read_put_probe(lines, 1235, int(stat.st_mtime)) == (PUT_NEED, False)  # another archive at that path
    assert read_put_probe(lines, 1234, int(stat.st_mtime) - 60) == (PUT_NEED, False)


def test_a_node_already_holding_the_file_at_the_path_asked_for_needs_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "env.tar.zst"
    archive.write_bytes(b"x" * 1234)
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "env.tar.zst").write_bytes(b"x" * 1234)
    assert probe(tmp_path, archive, tmp_path / "staging" / "env.tar.zst")[0] == PUT_HAVE
    (tmp_path / "staging" / "env.tar.zst").write_bytes(b"y" * 1234)  # same size, other bytes
    assert probe(tmp_path, archive, tmp_path / "staging" / "env.tar.zst")[0] == PUT_NEED


def test_a_node_without_the_heads_archive_or_a_writable_directory_says_so(tmp_path: Path) -> None:
    (tmp_path / "locked").mkdir(mode=0o500)
    state, sees = probe(tmp_path, tmp_path / "absent.tar.zst", tmp_path / "locked" / "staging" / "e.tar.zst")
    if os.geteuid() != 0:  # root writes anywhere
        assert state == PUT_NO_DIR
    assert not sees


def node_env(spec: dict[str, object], node: str) -> dict[str, object]:
    lines = run_shell(node_env_command("python3", spec), {"SLURMD_NODENAME": node})
    result: dict[str, object] = json.loads(next(ln for ln in lines if ln.startswith("@@ckenv "))[len("@@ckenv "):])
    return result


def test_one_spec_for_every_node_of_a_step_still_finds_the_nodes_that_share_a_directory(tmp_path: Path) -> None:
    prefix = str(tmp_path / "envs" / "ckconda")
    (tmp_path / "envs").mkdir()
    survey: dict[str, object] = {"op": "survey", "prefix": prefix, "run": "r1", "base_python": None}
    # two nodes of one step, one filesystem: the one that surveys last sees both tokens
    assert node_env(survey, "gpu01")["seen"] == {"prefix": ["gpu01"]}
    assert node_env(survey, "gpu02")["seen"] == {"prefix": ["gpu01", "gpu02"]}
    assert node_env({"op": "forget", "prefix": prefix, "run": "r1"}, "gpu01")["seen"] == {"prefix": ["gpu01", "gpu02"]}
    assert node_env({"op": "forget", "prefix": prefix, "run": "r1"}, "gpu02")["seen"] == {"prefix": ["gpu02"]}
    assert not list((tmp_path / "envs").iterdir())  # each removed its own token


def test_push_without_a_hostfile_outside_slurm_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOBID", raising=False)
    assert main(["env", "push", str(tmp_path / "e.tar.zst")]) == ExitCode.USAGE
    assert "say which nodes" in capsys.readouterr().err
