"""`clusterkit monitor` and Slurm: combinations that cannot mean anything are one-line usage errors (exit 2)
before any allocation is asked for or any step starts. The monitor over a real Slurm is
tests/cluster/test_slurm_monitor.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "tests" / "fixtures" / "monitor" / "synthetic-4x8gpu-job.jsonl"


def monitor(*args: str, job_id: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    if job_id is not None:
        env["SLURM_JOB_ID"] = job_id
    return subprocess.run([sys.executable, "-m", "clusterkit", "monitor", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, stdin=subprocess.DEVNULL, env=env)


@pytest.mark.parametrize(("args", "job_id", "message"), [
    (["--once", "--slurm", "hostfile"], None, "--slurm takes the nodes from the Slurm allocation; give no HOSTFILE"),
    (["--once", "--nodes", "2", "hostfile"], None, "--slurm takes the nodes from the Slurm allocation"),
    (["--once", "--no-slurm", "--nodes", "2"], None, "they cannot go with --no-slurm"),
    (["--replay", str(JOB), "--once", "--slurm"], None, "--replay plays a recording and reaches no nodes"),
    (["--replay", str(JOB), "--once", "--partition", "gpu"], None, "give no --slurm, --partition"),
    (["--once", "--slurm", "--user", "bob"], None, "--user: SSH options, but the nodes are reached through Slurm"),
    (["--once", "--identity", "k", "--ssh-port", "2222"], "42",
     "--ssh-port/--identity: SSH options, but the nodes are reached through Slurm (srun); give a HOSTFILE"),
])
def test_bad_combinations_with_slurm_are_usage_errors_before_slurm_is_asked(args: list[str], job_id: str | None,
                                                                           message: str) -> None:
    done = monitor(*args, job_id=job_id)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_replay_inside_an_allocation_plays_the_recording_and_asks_slurm_nothing() -> None:
    done = monitor("--replay", str(JOB), "--once", "--json", job_id="42")
    assert done.returncode in (0, 1), done.stderr
    assert '"live": false' in done.stdout


@pytest.mark.parametrize("command", [["doctor", "--slurm", "--identity", "k"],
                                     ["bench", "collectives", "--slurm", "--identity", "k"]])
def test_every_command_refuses_ssh_options_where_slurm_reaches_the_nodes(command: list[str]) -> None:
    # the refusal lives where the target is built, so no command ignores --identity silently under Slurm
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run([sys.executable, "-m", "clusterkit", *command],
                          capture_output=True, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL, env=env)
    assert done.returncode == 2, done.stderr
    assert "--identity: SSH options, but the nodes are reached through Slurm" in done.stderr
