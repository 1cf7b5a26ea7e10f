"""The three transports behind ``Nodes``: this machine (run for real here), and the launch lines SSH and
Slurm build (pure). The cluster tests run SSH and Slurm for real."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clusterkit.cluster import LocalReach, SlurmReach, SshReach, open_nodes
from clusterkit.cluster.local import LocalNodes
from clusterkit.cluster.nodes import LaunchStyle
from clusterkit.cluster.remote.slurm import Allocation
from clusterkit.cluster.remote.ssh import SshSettings
from clusterkit.cluster.remote.transfer import RemoteFile
from clusterkit.cluster.slurm import SlurmNodes
from clusterkit.cluster.ssh import SshNodes
from clusterkit.cluster.target import this_machine
from clusterkit.commands.flags import target_from_args
from clusterkit.core.launchline import LaunchPlan, include_spec
from clusterkit.errors import UsageError
from clusterkit.node.facts import SlurmJobFacts
from tests.fake_nodes import hosts_named


def here() -> LocalNodes:
    return LocalNodes(this_machine().hosts[0])


def remote_file(path: Path, data: bytes) -> RemoteFile:
    return RemoteFile(str(path), len(data), hashlib.sha256(data).hexdigest())


# ------------------------------------------------------------------------------------ this machine


def test_a_command_here_answers_with_its_output_and_status_and_knows_its_node_name() -> None:
    nodes = here()
    result = nodes.run('echo "on $CLUSTERKIT_NODE"; echo oops >&2; exit 3', 10)
    [(host, answer)] = result.items()
    assert answer.ok and answer.value is not None
    output = answer.value
    assert (output.exit_code, output.stdout.strip(), output.stderr.strip()) == (3, f"on {host}", "oops")


def test_a_command_here_that_outlives_its_deadline_is_that_hosts_error_not_a_hang() -> None:
    started = time.monotonic()
    result = here().run("sleep 20", 0.5)
    assert time.monotonic() - started < 5
    [failure] = result.failed.values()
    assert "no answer within 0.5s" in str(failure.error)


def test_the_agent_here_replies_with_facts_and_a_clock() -> None:
    reply = here().run_agent(["connect", "--host", "127.0.0.1", "--port", "1", "--timeout", "1"], 30)
    [value] = reply.succeeded.values()
    assert value.node_clock is not None
    assert isinstance(value.result, dict)


def test_a_file_put_here_is_copied_checked_and_left_alone_the_second_time(tmp_path: Path) -> None:
    data = b"weights" * 1000
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    target = tmp_path / "deep" / "copy.bin"
    first = here().put(source, remote_file(target, data), 10)
    assert [d.sent_bytes for d in first.succeeded.values()] == [len(data)]
    assert target.read_bytes() == data
    second = here().put(source, remote_file(target, data), 10)
    assert [d.notes for d in second.succeeded.values()] == [["already there"]]


def test_a_file_whose_copy_does_not_match_is_refused_and_nothing_is_left_behind(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"abc")
    target = tmp_path / "copy.bin"
    result = here().put(source, RemoteFile(str(target), 3, "0" * 64), 10)
    [failure] = result.failed.values()
    assert "does not match" in str(failure.error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.bin"]


def test_cleanup_here_kills_the_processes_of_that_run_only() -> None:
    run_id, other = "abcdef123456", "fedcba654321"
    victims = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"ck-run-id={rid}"])
               for rid in (run_id, other)]
    try:
        said = here().cleanup(run_id, 10)
        assert list(said.succeeded.values()) == ["killed 1"]
        assert victims[0].wait(5) != 0
        assert victims[1].poll() is None
    finally:
        for victim in victims:
            victim.kill()
            victim.wait()


def test_an_agent_stream_here_delivers_sample_lines() -> None:
    lines: list[str] = []
    got = threading.Event()

    def on_line(host: str, line: str, at: float) -> None:
        lines.append(line)
        got.set()

    [stream] = here().agent_streams(["stream", "--interval", "0.2"], on_line, lambda state: None,
                                    stale_after_s=5, lost_after_s=10)
    stream.start()
    try:
        assert got.wait(30)
    finally:
        stream.stop()
    assert lines[0].startswith("@@")


def test_a_launch_here_runs_deepspeeds_runner_without_ssh_on_loopback() -> None:
    nodes = here()
    plan = LaunchPlan(python="/env/bin/python", hostfile="/tmp/hostfile", script="train.py")
    line = nodes.launch_line(plan, nodes.hosts, LaunchStyle())
    assert "--no_ssh_check" in line.argv and "--force_multi" not in line.argv
    assert line.argv[line.argv.index("--master_addr") + 1] == "127.0.0.1"
    assert line.task_nodes is None


# ---------------------------------------------------------------------------------------------- ssh


def test_an_ssh_launch_of_the_whole_hostfile_names_no_include_and_a_part_names_exactly_its_slots() -> None:
    hosts = hosts_named("node1", "node2", "node3", slots=2)
    nodes = SshNodes(hosts, SshSettings(port=2222), hostfile="/h")
    plan = LaunchPlan(python="/env/bin/python", hostfile="", script="train.py")
    whole = nodes.launch_line(plan, hosts, LaunchStyle()).argv
    assert "--include" not in whole and whole[whole.index("--hostfile") + 1] == "/h"
    assert whole[whole.index("--ssh_port") + 1] == "2222"
    part = nodes.launch_line(plan, hosts[1:], LaunchStyle()).argv
    assert part[part.index("--include") + 1] == include_spec(hosts[1:]) == "node2:0,1@node3:0,1"


def test_one_other_host_over_ssh_goes_through_the_multi_node_launcher() -> None:
    hosts = hosts_named("node-elsewhere.invalid", "node2")
    line = SshNodes(hosts, SshSettings(), hostfile="/h").launch_line(
        LaunchPlan(python="p", hostfile="", script="s.py"), hosts[:1], LaunchStyle()).argv
    assert "--force_multi" in line and "--no_ssh_check" not in line


# -------------------------------------------------------------------------------------------- slurm


def allocation(nodes: list[str], gpus: int = 0) -> Allocation:
    return Allocation(SlurmJobFacts("42", "batch", nodes, None, None, None,
                                    gpus_per_node={n: gpus for n in nodes} if gpus else {}))


def test_a_slurm_launch_is_one_srun_task_per_node_labelled_with_the_node_it_ran_on() -> None:
    nodes = SlurmNodes(allocation(["gpu01", "gpu02"], gpus=8), environ={})
    assert [h.slots for h in nodes.hosts] == [tuple(range(8))] * 2
    line = nodes.launch_line(LaunchPlan(python="/env/bin/python", hostfile="", script="train.py"), nodes.hosts,
                             LaunchStyle(cwd="/repo", launcher_args="--overlap", exports={"A": "1"}))
    assert line.argv[0] == "srun" and "--jobid=42" in line.argv and "--gres=gpu:8" in line.argv
    assert "--label" in line.argv and "--overlap" in line.argv and "A=1" in line.argv
    assert line.task_nodes == ["gpu01", "gpu02"]


# --------------------------------------------------------------------------------- choosing once


def parsed(**flags: object) -> argparse.Namespace:
    base: dict[str, object] = {"hostfile": None, "include": "", "exclude": "", "user": None, "ssh_port": None,
                               "identity": None, "trust_new_hosts": False, "connect_timeout": 10.0,
                               "slurm": False, "no_slurm": False, "partition": None, "nodes": None,
                               "nodelist": None, "slurm_time": None, "slurm_args": "", "slurm_wait": 60.0}
    return argparse.Namespace(**{**base, **flags})


def test_the_transport_is_chosen_once_from_the_flags(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a.invalid slots=2\nnode-b.invalid slots=2\n")
    assert isinstance(target_from_args(parsed(hostfile=str(hostfile)), environ={}).reach, SshReach)
    assert isinstance(target_from_args(parsed(), environ={}).reach, LocalReach)
    assert isinstance(target_from_args(parsed(), environ={"SLURM_JOB_ID": "7"}).reach, SlurmReach)
    inside = target_from_args(parsed(), environ={"SLURM_JOB_ID": "7"}).reach
    assert isinstance(inside, SlurmReach) and inside.request is None
    outside = target_from_args(parsed(partition="gpu"), environ={}).reach
    assert isinstance(outside, SlurmReach) and outside.request is not None and outside.request.partition == "gpu"
    assert isinstance(target_from_args(parsed(), environ={"SLURM_JOB_ID": "7"}).reach, SlurmReach)
    assert isinstance(target_from_args(parsed(no_slurm=True), environ={"SLURM_JOB_ID": "7"}).reach, LocalReach)


def test_a_hostfile_naming_only_this_machine_is_reached_without_ssh(tmp_path: Path) -> None:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=4\n")
    target = target_from_args(parsed(hostfile=str(hostfile)), environ={})
    assert isinstance(target.reach, LocalReach)
    with open_nodes(target) as nodes:
        assert nodes.transport == "local" and [len(h.slots) for h in nodes.hosts] == [4]


def test_include_without_nodes_to_choose_from_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="need a HOSTFILE"):
        target_from_args(parsed(include="node1"), environ={})
