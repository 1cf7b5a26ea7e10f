"""``clusterkit launch`` on this machine: arguments, exit codes, the preflight gate and the hand-over.

The launch across real nodes is proven in tests/cluster/test_launch.py.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = "clusterkit/workloads/scripts/zero_smoke.py"
#: A host that is not this machine and that no resolver knows (RFC 6761 reserves .invalid).
UNREACHABLE = "no-such-node.invalid"


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


@pytest.fixture
def hostfile(tmp_path: Path) -> Path:
    path = tmp_path / "hostfile"
    path.write_text("node1 slots=2\nnode2 slots=2\n")
    return path


@pytest.fixture
def fake_env(tmp_path: Path) -> Path:
    """An env whose `deepspeed` only records the arguments it was started with."""
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    launcher = bin_dir / "deepspeed"
    launcher.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0" "$@" > {tmp_path}/argv\n')
    launcher.chmod(0o755)
    return bin_dir / "python"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_print_only_prints_one_runnable_line_and_runs_nothing(hostfile: Path, fake_env: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["launch", str(hostfile), "--python", str(fake_env), "--no-preflight", "--print-only",
                 "--master-port", "29511", "--", SMOKE, "--steps", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("\n") == 1
    assert shlex.split(out) == [str(fake_env.parent / "deepspeed"), "--hostfile", str(hostfile), "--launcher", "pdsh",
                                "--master_port", "29511", SMOKE, "--steps", "1"]
    assert not (tmp_path / "argv").exists()


def test_the_launch_hands_over_to_deepspeed_with_the_printed_arguments(hostfile: Path, fake_env: Path,
                                                                       tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clusterkit", "launch", str(hostfile), "--python", str(fake_env), "--no-preflight",
         "--deepspeed-config", "ds.json", "--", SMOKE, "--steps", "1"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "launching:" in result.stderr
    recorded = (tmp_path / "argv").read_text().splitlines()
    assert recorded == [str(fake_env.parent / "deepspeed"), "--hostfile", str(hostfile), "--launcher", "pdsh",
                        SMOKE, "--steps", "1", "--deepspeed_config", "ds.json"]


def test_without_a_training_command_it_says_how_to_give_one(hostfile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", str(hostfile)]) == 2
    assert "after '--'" in capsys.readouterr().err


def test_a_script_that_is_not_here_is_a_usage_error(hostfile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", str(hostfile), "--no-preflight", "--", "no_such_train.py"]) == 2
    assert "no_such_train.py: no such file" in capsys.readouterr().err


def test_a_bad_hostfile_is_named_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "hostfile"
    bad.write_text("node1 slots=2\nnode2 slots=two\n")
    assert main(["launch", str(bad), "--no-preflight", "--print-only", "--", SMOKE]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err


def test_an_env_without_deepspeed_cannot_launch(hostfile: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    python = tmp_path / "bare" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    assert main(["launch", str(hostfile), "--python", str(python), "--no-preflight", "--print-only", "--", SMOKE]) == 1
    assert f"no DeepSpeed launcher at {python.parent}/deepspeed" in capsys.readouterr().err


def test_two_different_configs_are_refused(hostfile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["launch", str(hostfile), "--no-preflight", "--print-only", "--deepspeed-config", "a.json", "--",
                 SMOKE, "--deepspeed_config", "b.json"])
    assert code == 2
    assert "differs from --deepspeed_config b.json" in capsys.readouterr().err


def test_a_preflight_error_stops_the_launch(tmp_path: Path, fake_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = tmp_path / "hostfile"
    unreachable.write_text(f"{UNREACHABLE} slots=1\n")
    code = main(["launch", str(unreachable), "--python", str(fake_env), "--ssh-port", str(closed_port()),
                 "--connect-timeout", "2", "--timeout", "10", "--", SMOKE])
    captured = capsys.readouterr()
    assert code == 1
    assert "node-unreachable" in captured.err
    assert "not launching" in captured.err
    assert captured.out == ""
    assert not (tmp_path / "argv").exists()


def test_force_launches_despite_preflight_errors(tmp_path: Path, fake_env: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = tmp_path / "hostfile"
    unreachable.write_text(f"{UNREACHABLE} slots=1\n")
    code = main(["launch", str(unreachable), "--python", str(fake_env), "--ssh-port", str(closed_port()),
                 "--connect-timeout", "2", "--timeout", "10", "--force", "--print-only", "--", SMOKE])
    captured = capsys.readouterr()
    assert code == 0
    assert "node-unreachable" in captured.err
    assert shlex.split(captured.out)[-1] == SMOKE


def test_an_unknown_skip_id_is_a_usage_error(hostfile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", str(hostfile), "--skip", "no-such-check", "--", SMOKE]) == 2
    assert "unknown check id or tag 'no-such-check'" in capsys.readouterr().err


def test_the_help_names_the_print_only_and_force_switches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["launch", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--print-only" in out
    assert "--force" in out


def test_the_ranks_get_the_flight_recorder_hook_on_their_path_unless_turned_off(tmp_path: Path, fake_env: Path) -> None:
    (fake_env.parent / "deepspeed").write_text(f'#!/bin/sh\nprintf "%s\\n" "$PYTHONPATH" > {tmp_path}/pythonpath\n')
    here = tmp_path / "hostfile"
    here.write_text("localhost slots=1\n")
    argv = [sys.executable, "-m", "clusterkit", "launch", str(here), "--python", str(fake_env), "--force",
            "--timeout", "20"]
    done = subprocess.run([*argv, "--", SMOKE], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    job = done.stderr.split("flight recorder: job ")[1].split(",")[0]
    hook = Path(f"/tmp/clusterkit-runs/{job}/flightrec")
    try:
        path = (tmp_path / "pythonpath").read_text().strip().split(":")
        # the stack hook (clusterkit stacks) sits right after the launch directory, then the flight recorder's
        assert path[0] == str(REPO) and "/stacks-hook-" in path[1] and path[2] == str(hook)
        assert (hook / "sitecustomize.py").is_file() and oct(hook.stat().st_mode)[-3:] == "700"
    finally:
        subprocess.run(["rm", "-rf", str(hook.parent)], check=False)
    off = subprocess.run([*argv, "--no-flight-recorder", "--", SMOKE], capture_output=True, text=True, timeout=120,
                         check=False)
    assert off.returncode == 0 and "flight recorder" not in off.stderr
    assert "clusterkit-runs" not in (tmp_path / "pythonpath").read_text()
