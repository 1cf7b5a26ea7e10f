"""`clusterkit env pack | push | verify` given the wrong thing: one line saying what was given, exit 2, before
anything is packed or sent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit.cli import main
from clusterkit.errors import ExitCode


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    path = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path


def test_push_with_a_hostfile_and_no_archive_asks_for_the_archive(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # issue 19, M9: it said "say which nodes"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=1\n")
    code, err = error_of(["env", "push", str(hostfile)], capsys)
    assert code == ExitCode.USAGE
    assert err == (f"clusterkit: error: which env? clusterkit env push HOSTFILE ARCHIVE: {hostfile} is taken as "
                   "the HOSTFILE; add the ARCHIVE that `clusterkit env pack` made")


def test_an_archive_path_that_is_a_directory_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # issue 19, M9: it said "no such archive"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=1\n")
    code, err = error_of(["env", "verify", str(hostfile), str(tmp_path)], capsys)
    assert code == ExitCode.USAGE
    assert err.startswith(f"clusterkit: error: {tmp_path} is a directory, not an archive")


def test_pack_given_a_file_says_it_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # issue 19, M9: it said "no such directory"
    script = tmp_path / "train.py"
    script.write_text("print(1)\n")
    code, err = error_of(["env", "pack", str(script)], capsys)
    assert code == ExitCode.USAGE
    assert err.startswith(f"clusterkit: error: {script} is a file, not an env")


@pytest.mark.parametrize("level", ["99", "0", "-5"])
def test_pack_at_a_level_zstd_does_not_have_is_a_usage_error(venv: Path, tmp_path: Path, level: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # issue 19, C1: --level 99 was a ValueError (exit 3)
    code, err = error_of(["env", "pack", str(venv), "-o", str(tmp_path / "out"), "--level", level], capsys)
    assert code == ExitCode.USAGE
    assert err == (f"clusterkit: error: --level {level}: zstd levels go from 1 (fastest) to 22 (smallest); the "
                   "default is 3")


def test_pack_into_a_directory_that_cannot_be_made_is_a_usage_error(venv: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # issue 19, C1 (unwritable -o as a user without access: tests/cluster/test_envpack.py)
    (tmp_path / "a-file").write_text("")
    code, err = error_of(["env", "pack", str(venv), "-o", str(tmp_path / "a-file" / "out")], capsys)
    assert code == ExitCode.USAGE
    out = tmp_path / "a-file" / "out"
    assert err == f"clusterkit: error: cannot create {out}: Not a directory; pick another -o DIR"
