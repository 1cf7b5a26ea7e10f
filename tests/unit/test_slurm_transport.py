"""The Slurm transport's pure parts: srun's labelled output into per-node results, the step's argv and
environment, which transport a command takes."""

from __future__ import annotations

import argparse
import shlex
import subprocess

import pytest

from clusterkit.cluster.remote.slurm import (
    EXIT_MARK,
    FOLD_BYTES,
    FOLD_MARK,
    NODE_MARK,
    Allocation,
    _Step,
    srun_argv,
    step_environment,
    step_script,
)
from clusterkit.commands.slurm import use_slurm
from clusterkit.errors import UsageError
from clusterkit.node.facts import SlurmJobFacts


def job(**changes: object) -> SlurmJobFacts:
    values: dict[str, object] = {"job_id": "42", "partition": "gpu", "nodes": ["gpu01", "gpu02", "gpu03"],
                                 "time_limit_s": 3600, "time_left_s": 3000, "cpus_per_task": None}
    values.update(changes)
    return SlurmJobFacts(**values)  # type: ignore[arg-type]


class Seen:
    def __init__(self) -> None:
        self.updates: list[tuple[str, str]] = []

    def update(self, host: str, state: str, detail: str = "") -> None:
        self.updates.append((host, state))


def test_labelled_lines_become_each_nodes_output_in_task_order() -> None:
    seen = Seen()
    step = _Step(["gpu01", "gpu02"], seen)
    for line, stream in [(f"1: {NODE_MARK} gpu02", "stdout"), (f"0: {NODE_MARK} gpu01", "stdout"),
                         ("0: hello from one", "stdout"), ("1: warning: two", "stderr"),
                         ("1: line: with a colon", "stdout"), (f"1: {EXIT_MARK} 3", "stdout"),
                         ("srun: Job step aborted", "stderr")]:
        step.feed(line.encode(), stream)
    assert not step.all_done.is_set()
    step.feed(f" 0: {EXIT_MARK} 0".encode(), "stdout")
    assert step.all_done.is_set()
    assert step.by_node["gpu01"].stdout == ["hello from one"]
    assert step.by_node["gpu02"].stdout == ["line: with a colon"]
    assert step.by_node["gpu02"].stderr == ["warning: two"]
    assert (step.by_node["gpu01"].exit_code, step.by_node["gpu02"].exit_code) == (0, 3)
    assert seen.updates == [("gpu02", "failed"), ("gpu01", "ok")]
    assert step.srun_lines == ["srun: Job step aborted"]


def test_srun_errors_are_pinned_on_the_node_they_name() -> None:
    step = _Step(["gpu01", "gpu02"], None)
    step.feed(b"srun: error: Task launch for StepId=42.3 failed on node gpu02: Socket timed out on send/recv "
              b"operation", "stderr")
    step.feed(b"srun: error: gpu01: task 0: Killed", "stderr")
    assert step.srun_said("gpu02") == ("Task launch for StepId=42.3 failed on node gpu02: Socket timed out on "
                                       "send/recv operation")
    assert step.srun_said("gpu01") == "gpu01: task 0: Killed"
    assert step.srun_said("gpu03") == ""


def test_the_step_runs_one_task_per_node_beside_the_jobs_own_steps() -> None:
    argv = srun_argv(Allocation(job(gpus_per_node={"gpu01": 8, "gpu02": 8})), ["gpu01", "gpu02"], "true", 30)
    assert argv[:9] == ["srun", "--jobid=42", "--overlap", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                        "--nodelist=gpu[01-02]", "--label", "--kill-on-bad-exit=0"]
    assert "--time=1" in argv and "--gres=gpu:8" in argv
    assert argv[-3:] == ["/bin/sh", "-c", "true"]


def test_no_step_time_limit_beyond_what_the_job_has_left() -> None:
    argv = srun_argv(Allocation(job(time_left_s=30)), ["gpu01"], "true", 120)
    assert not any(word.startswith("--time") for word in argv)


def test_the_allocations_shaping_variables_stay_out_of_the_step() -> None:
    env = step_environment({"SLURM_JOB_ID": "42", "SLURM_NTASKS_PER_NODE": "8", "SLURM_CPUS_PER_TASK": "4",
                            "PATH": "/bin"})
    assert env == {"SLURM_JOB_ID": "42", "PATH": "/bin"}


def test_the_task_script_brackets_the_command_with_its_node_and_status() -> None:
    out = subprocess.run(["/bin/sh", "-c", step_script("echo hi; exit 7")],
                         env={"SLURMD_NODENAME": "gpu09", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         check=False)
    assert out.stdout.splitlines() == [f"{NODE_MARK} gpu09", "hi", f"{EXIT_MARK} 7"]


def test_long_lines_are_folded_on_the_node_and_joined_again_on_the_head() -> None:
    long_line = "x" * 2500 + "é" * 400 + "end"
    command = f"printf '%s\\n' {shlex.quote(long_line)}"
    out = subprocess.run(["/bin/sh", "-c", step_script(command)],
                         env={"SLURMD_NODENAME": "gpu01", "PATH": "/usr/bin:/bin"}, capture_output=True, check=True)
    pieces = out.stdout.splitlines()
    assert max(len(piece) for piece in pieces) <= FOLD_BYTES + len(FOLD_MARK)  # srun passes each whole
    step = _Step(["gpu01"], None)
    for piece in pieces:
        step.feed(b"0: " + piece, "stdout")
    assert step.by_node["gpu01"].stdout == [long_line]
    assert step.by_node["gpu01"].exit_code == 0


def flags(**given: object) -> argparse.Namespace:
    values = {"slurm": False, "no_slurm": False, "partition": None, "nodes": None, "nodelist": None,
              "slurm_time": None, "slurm_args": ""}
    values.update(given)
    return argparse.Namespace(**values)


@pytest.mark.parametrize(("given", "hostfile", "env", "expected"), [
    ({}, None, {"SLURM_JOB_ID": "42"}, True),          # inside an allocation: its nodes, over srun
    ({}, "hostfile", {"SLURM_JOB_ID": "42"}, False),   # a hostfile means SSH, even inside one
    ({}, None, {}, False),                             # outside: this machine (doctor) or a usage error
    ({}, "hostfile", {}, False),                       # outside: SSH as ever
    ({"slurm": True}, None, {}, True),                 # salloc first
    ({"nodes": "4"}, None, {}, True),                  # an allocation request implies --slurm
    ({"no_slurm": True}, None, {"SLURM_JOB_ID": "42"}, False),
])
def test_which_transport_a_command_takes(given: dict[str, object], hostfile: str | None, env: dict[str, str],
                                        expected: bool) -> None:
    assert use_slurm(flags(**given), hostfile, env) is expected


def test_slurm_and_a_hostfile_together_are_a_usage_error() -> None:
    with pytest.raises(UsageError, match="give no HOSTFILE"):
        use_slurm(flags(slurm=True), "hostfile", {})
    with pytest.raises(UsageError, match="cannot go with --no-slurm"):
        use_slurm(flags(no_slurm=True, partition="gpu"), None, {})
