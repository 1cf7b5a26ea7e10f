"""The srun line under Slurm: DeepSpeed's per-node launcher with each node's rank, in argument order."""

from __future__ import annotations

import base64
import json
import shlex

import pytest

from clusterkit.core.inventory import parse_hostfile, select_hosts
from clusterkit.core.launchline import LaunchPlan
from clusterkit.core.slurmlaunch import (
    NODE_RANK_WRAPPER,
    SrunPlan,
    build_srun_line,
    dataloader_workers,
    encode_world_info,
    parse_interval,
    runner_exports,
    saves_no_checkpoints,
)

HOSTS = select_hosts(parse_hostfile("node1 slots=2\nnode2 slots=2\nnode3 slots=2\n", "slurm job 7"))


def plan(**changes: object) -> SrunPlan:
    base = LaunchPlan(python="/opt/env/bin/python", hostfile="", script="train.py", script_args=["--steps", "2"],
                      master_addr="10.0.0.11", master_port=29500)
    values: dict[str, object] = {"base": base, "hosts": HOSTS, "cwd": "/repo", "job_id": "7", "cpus_per_task": 8}
    values.update(changes)
    return SrunPlan(**values)  # type: ignore[arg-type]


def test_world_info_is_what_deepspeeds_runner_encodes() -> None:
    decoded = json.loads(base64.urlsafe_b64decode(encode_world_info(HOSTS)))
    assert decoded == {"node1": [0, 1], "node2": [0, 1], "node3": [0, 1]}
    assert list(decoded) == ["node1", "node2", "node3"]  # node rank order


def test_one_task_per_node_runs_deepspeeds_launch_py_with_that_nodes_rank() -> None:
    line = build_srun_line(plan(exports={"PYTHONPATH": "/repo"}))
    assert line[:10] == ["srun", "--jobid=7", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1",
                         "--nodelist=node[1-3]", "--kill-on-bad-exit=1", "--chdir=/repo", "--cpus-per-task=8",
                         "--export=ALL"]
    wrapper = line.index(NODE_RANK_WRAPPER)
    assert line[wrapper - 4:wrapper] == ["env", "PYTHONPATH=/repo", "/bin/sh", "-c"]
    assert line[wrapper + 1] == "/opt/env/bin/python"
    assert line[wrapper + 2].startswith("--world_info=")
    assert line[wrapper + 3:] == ["--master_addr=10.0.0.11", "--master_port=29500", "train.py", "--steps", "2"]


def test_the_wrapper_puts_the_node_rank_before_the_script(tmp_path: object) -> None:
    import subprocess

    argv = ["/bin/sh", "-c", NODE_RANK_WRAPPER.replace("exec ", "exec echo "), "PY", "--world_info=X", "t.py", "-a"]
    out = subprocess.run(argv, env={"SLURM_NODEID": "2", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["PY", "-u", "-m", "deepspeed.launcher.launch", "--node_rank=2", "--world_info=X", "t.py", "-a"]


def test_the_printed_line_splits_back_into_the_same_words() -> None:
    line = build_srun_line(plan(exports={"NCCL_DEBUG": "INFO", "X": "a b"}))
    assert shlex.split(shlex.join(line)) == line


def test_gpus_and_no_jobid_when_printing_for_another_allocation() -> None:
    line = build_srun_line(plan(job_id=None, gpus_per_node=8, cpus_per_task=None))
    assert "--gres=gpu:8" in line
    assert not any(word.startswith(("--jobid", "--cpus-per-task")) for word in line)


def test_a_config_named_by_launch_is_handed_to_the_script() -> None:
    base = LaunchPlan(python="/p/python", hostfile="", script="t.py", deepspeed_config="ds.json")
    assert build_srun_line(plan(base=base))[-3:] == ["t.py", "--deepspeed_config", "ds.json"]


def test_runner_exports_put_the_launch_directory_first_then_deepspeed_env() -> None:
    assert runner_exports("/repo", "/lib", {"NCCL_IB_DISABLE": "1"}) == {"PYTHONPATH": "/repo:/lib",
                                                                        "NCCL_IB_DISABLE": "1"}
    assert runner_exports("/repo", None, {}) == {"PYTHONPATH": "/repo"}


def test_training_arguments_that_slurm_checks_weigh() -> None:
    assert dataloader_workers(["--dataloader_num_workers", "6"]) == 6
    assert dataloader_workers(["--dataloader_num_workers=4"]) == 4
    assert dataloader_workers(["--steps", "2"]) is None
    assert saves_no_checkpoints(["--save_strategy", "no"])
    assert not saves_no_checkpoints(["--save_strategy=steps"])


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200),
                                               ("1h30m", 5400), ("1d", 86400)])
def test_checkpoint_intervals(text: str, seconds: float) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "30 minutes", "1x"])
def test_bad_checkpoint_intervals(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_interval(text)
