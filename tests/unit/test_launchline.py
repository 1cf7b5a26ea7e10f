"""The deepspeed launch line: runner options before the script, the script's arguments untouched after it."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterkit.core.launchline import (
    ConfigInArgs,
    LaunchPlan,
    build_launch_line,
    config_in_args,
    deepspeed_launcher,
    shell_line,
)


def plan(**overrides: object) -> LaunchPlan:
    values: dict[str, object] = {"python": "/opt/env/bin/python", "hostfile": "/home/u/hostfile",
                                 "script": "train.py", "script_args": ["--epochs", "1"]}
    values.update(overrides)
    return LaunchPlan(**values)  # type: ignore[arg-type]


def test_the_launcher_is_the_deepspeed_script_of_the_training_env() -> None:
    assert deepspeed_launcher("/opt/env/bin/python3.11") == "/opt/env/bin/deepspeed"
    assert build_launch_line(plan())[0] == "/opt/env/bin/deepspeed"


def test_every_runner_option_comes_before_the_script_and_the_script_args_after_it() -> None:
    line = build_launch_line(plan(include="node1@node2:0,1", exclude="node3", launcher_args="-f 64",
                                  master_addr="10.0.0.1", master_port=29501, ssh_port=2222))
    cut = line.index("train.py")
    assert line[:cut] == ["/opt/env/bin/deepspeed", "--hostfile", "/home/u/hostfile", "--include", "node1@node2:0,1",
                          "--exclude", "node3", "--launcher", "pdsh", "--launcher_args", "-f 64",
                          "--master_addr", "10.0.0.1", "--master_port", "29501", "--ssh_port", "2222"]
    assert line[cut + 1:] == ["--epochs", "1"]


def test_unset_options_are_left_to_deepspeeds_defaults() -> None:
    assert build_launch_line(plan()) == ["/opt/env/bin/deepspeed", "--hostfile", "/home/u/hostfile",
                                         "--launcher", "pdsh", "train.py", "--epochs", "1"]


def test_a_script_argument_that_looks_like_a_runner_option_stays_with_the_script() -> None:
    line = build_launch_line(plan(script_args=["--master_port", "1"], master_port=29500))
    assert line[line.index("train.py") + 1:] == ["--master_port", "1"]


def test_a_module_is_launched_with_the_module_flag_before_its_name() -> None:
    line = build_launch_line(plan(script="pkg.train", module=True))
    assert line[line.index("pkg.train") - 1] == "--module"


@pytest.mark.parametrize(("args", "expected"), [
    (["--deepspeed_config", "ds.json"], ConfigInArgs("ds.json", "--deepspeed_config")),
    (["--lr", "1", "--deepspeed_config=ds.json"], ConfigInArgs("ds.json", "--deepspeed_config")),
    (["--deepspeed", "ds.json", "--bf16"], ConfigInArgs("ds.json", "--deepspeed")),
    (["--deepspeed=ds.json"], ConfigInArgs("ds.json", "--deepspeed")),
    (["--deepspeed", "--deepspeed_config", "ds.json"], ConfigInArgs("ds.json", "--deepspeed_config")),
    (["--deepspeed"], None),
    (["--deepspeed_config"], None),
    (["--epochs", "1"], None),
])
def test_the_config_the_script_arguments_name_is_found(args: list[str], expected: ConfigInArgs | None) -> None:
    assert config_in_args(args) == expected


def test_a_config_is_handed_to_a_script_whose_arguments_name_none() -> None:
    line = build_launch_line(plan(deepspeed_config="ds.json"))
    assert line[-4:] == ["--epochs", "1", "--deepspeed_config", "ds.json"]


def test_an_hf_trainer_gets_its_config_through_its_own_flag() -> None:
    line = build_launch_line(plan(deepspeed_config="ds.json", config_flag="--deepspeed"))
    assert line[-2:] == ["--deepspeed", "ds.json"]


def test_a_config_already_in_the_script_arguments_is_not_added_twice() -> None:
    line = build_launch_line(plan(script_args=["--deepspeed", "ds.json"], deepspeed_config="ds.json"))
    assert line.count("ds.json") == 1


def test_installed_deepspeeds_runner_reads_the_line_as_intended() -> None:
    runner = pytest.importorskip("deepspeed.launcher.runner")
    line = build_launch_line(plan(include="node1@node2", master_addr="10.0.0.1", master_port=29501,
                                  ssh_port=2222, deepspeed_config="ds.json"))
    parsed = runner.parse_args(line[1:])
    assert parsed.hostfile == "/home/u/hostfile"
    assert parsed.include == "node1@node2"
    assert (parsed.launcher, parsed.master_addr, parsed.master_port, parsed.ssh_port) == \
        ("pdsh", "10.0.0.1", 29501, 2222)
    assert parsed.user_script == "train.py"
    assert parsed.user_args == ["--epochs", "1", "--deepspeed_config", "ds.json"]


@given(st.lists(st.text(min_size=1).filter(lambda s: "\x00" not in s), max_size=8))
def test_the_printed_line_splits_back_into_exactly_the_same_words(words: list[str]) -> None:
    argv = build_launch_line(plan(script_args=words))
    assert shlex.split(shell_line(argv)) == argv


def test_one_remote_host_goes_through_the_multi_node_launcher_and_one_local_host_needs_no_ssh() -> None:
    runner = pytest.importorskip("deepspeed.launcher.runner")
    remote = runner.parse_args(build_launch_line(plan(force_multi=True))[1:])
    local = runner.parse_args(build_launch_line(plan(no_ssh_check=True, master_addr="127.0.0.1"))[1:])
    assert (remote.force_multi, remote.no_ssh_check) == (True, False)
    assert (local.force_multi, local.no_ssh_check, local.master_addr) == (False, True, "127.0.0.1")
