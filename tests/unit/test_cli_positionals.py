"""Positionals after options reach the command as users type them (argparse alone leaves them over when
an optional positional comes first, as in ``env push [HOSTFILE] ARCHIVE``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterkit.cli import main
from clusterkit.errors import ExitCode


@pytest.fixture
def outside_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


@pytest.mark.parametrize("argv", [
    ["env", "push", "HOSTS", "--json", "ARCHIVE.tar.zst"],
    ["env", "push", "HOSTS", "ARCHIVE.tar.zst", "--json"],
    ["env", "push", "--json", "HOSTS", "ARCHIVE.tar.zst"],
    ["env", "verify", "HOSTS", "--connect-timeout", "3", "ARCHIVE.tar.zst"],
])
def test_the_hostfile_and_the_archive_are_told_apart_wherever_the_options_sit(
        argv: list[str], tmp_path: Path, outside_slurm: None, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / word) if word.isupper() or word.startswith("ARCHIVE") else word for word in argv]
    assert main(argv) == ExitCode.USAGE
    assert f"{tmp_path / 'ARCHIVE.tar.zst'}: no such archive" in capsys.readouterr().err


def test_one_positional_is_the_archive(tmp_path: Path, outside_slurm: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "push", "--json", str(tmp_path / "e.tar.zst")]) == ExitCode.USAGE
    assert "say which nodes" in capsys.readouterr().err


def test_a_third_positional_or_an_unknown_option_is_still_refused(tmp_path: Path, outside_slurm: None,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "push", "h", "--json", "a.tar.zst", "extra"]) == ExitCode.USAGE
    assert "unrecognized arguments: a.tar.zst extra" in capsys.readouterr().err
    assert main(["env", "push", "h", "a.tar.zst", "--no-such-flag"]) == ExitCode.USAGE
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
