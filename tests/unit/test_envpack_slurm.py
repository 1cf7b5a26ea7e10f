"""env push through Slurm, its pure parts: whether nodes read the head's archive where it lies, the probe
each node runs (by a real shell here), node_env filling in each node's own name in a step's one spec."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from clusterkit.cli import main
from clusterkit.envpack.pack import node_env_command
from clusterkit.envpack.slurm_push import NO_DIR, probe_command, read_in_place, sees_head_archive
from clusterkit.errors import ExitCode


def run_shell(command: str, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    return done.stdout.splitlines()


def test_a_node_that_sees_the_heads_archive_with_its_size_and_time_reads_it_in_place(tmp_path: Path) -> None:
    archive = tmp_path / "env.tar.zst"
    archive.write_bytes(b"x" * 1234)
    stat = archive.stat()
    lines = run_shell(probe_command(str(archive), str(tmp_path / "staging")))
    assert (tmp_path / "staging").is_dir() and NO_DIR not in lines
    assert sees_head_archive(lines, 1234, int(stat.st_mtime))
    assert not sees_head_archive(lines, 1235, int(stat.st_mtime))  # another archive at the same path
    assert not sees_head_archive(lines, 1234, int(stat.st_mtime) - 60)


def test_a_node_without_the_heads_archive_or_a_writable_staging_directory_says_so(tmp_path: Path) -> None:
    (tmp_path / "locked").mkdir(mode=0o500)
    lines = run_shell(probe_command(str(tmp_path / "absent.tar.zst"), str(tmp_path / "locked" / "staging")))
    if os.geteuid() != 0:  # root writes anywhere
        assert NO_DIR in lines
    assert not sees_head_archive(lines, 0, 0)


@pytest.mark.parametrize(("seeing", "staging", "in_place"), [
    ({"n1": True, "n2": True}, "/stage/e.tar.zst", True),
    ({"n1": True, "n2": False}, "/stage/e.tar.zst", False),  # sbcast goes to the whole job anyway
    ({}, "/stage/e.tar.zst", False),
    ({"n1": False}, "/packs/e.tar.zst", True),  # sbcast would write over the head's own archive
])
def test_nodes_read_the_archive_in_place_only_when_all_see_it_or_sbcast_would_overwrite_it(
        seeing: dict[str, bool], staging: str, in_place: bool) -> None:
    assert read_in_place(seeing, "/packs/e.tar.zst", staging) is in_place


def node_env(spec: dict[str, object], node: str) -> dict[str, object]:
    lines = run_shell(node_env_command("python3", spec), {"SLURMD_NODENAME": node})
    result: dict[str, object] = json.loads(next(ln for ln in lines if ln.startswith("@@ckenv "))[len("@@ckenv "):])
    return result


def test_one_spec_for_every_node_of_a_step_still_finds_the_nodes_that_share_a_directory(tmp_path: Path) -> None:
    prefix = str(tmp_path / "envs" / "ckconda")
    (tmp_path / "envs").mkdir()
    survey = {"op": "survey", "prefix": prefix, "run": "r1", "base_python": None}
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
