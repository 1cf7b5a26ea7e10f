"""The deepspeed line a workload runs with, and the scripts shipped to this machine."""

from __future__ import annotations

from pathlib import Path

from clusterkit.inventory import ActiveHost, parse_hostfile, select_hosts
from clusterkit.workloads.session import WorkloadContext, rank_layout
from clusterkit.workloads.ship import bundle_digest, bundle_files, ship_local

HOSTFILE = parse_hostfile("node1 slots=2\nnode2 slots=2\nnode3 slots=2\n", "hostfile")


def context(include: str = "") -> WorkloadContext:
    return WorkloadContext(hosts=select_hosts(HOSTFILE, include), hostfile="/home/me/hostfile",
                           python="/opt/env/bin/python", hostfile_hosts=select_hosts(HOSTFILE))


def test_the_whole_hostfile_needs_no_filter_and_the_run_id_marks_the_script() -> None:
    ctx = context()
    argv = ctx.command_line("/tmp/ck/collectives.py", ["--ops", "all_reduce"], ctx.hosts, "abc123")
    assert argv == ["/opt/env/bin/deepspeed", "--hostfile", "/home/me/hostfile", "--launcher", "pdsh",
                    "--master_port", "29500", "/tmp/ck/collectives.py", "--ops", "all_reduce",
                    "--ck-run-id=abc123"]


def test_a_subset_is_named_with_include_even_when_the_command_was_given_one() -> None:
    ctx = context(include="node2@node3")
    argv = ctx.command_line("/s.py", [], ctx.hosts, "abc123", master_port=29601)
    assert argv[argv.index("--include") + 1] == "node2:0,1@node3:0,1"
    assert argv[argv.index("--master_port") + 1] == "29601"


def test_one_remote_host_goes_through_pdsh_not_the_local_path() -> None:
    ctx = context()
    one = [ActiveHost("node2", (0,), HOSTFILE.entry("node2"))]
    argv = ctx.command_line("/s.py", [], one, "abc123")
    assert "--force_multi" in argv[:argv.index("/s.py")] and "--no_ssh_check" not in argv
    assert argv[argv.index("--include") + 1] == "node2:0"


def test_this_machine_alone_launches_locally_without_ssh() -> None:
    local = parse_hostfile("localhost slots=2\n", "hostfile-localhost-2")
    ctx = WorkloadContext(hosts=select_hosts(local), hostfile="/tmp/h", python="/opt/env/bin/python")
    argv = ctx.command_line("/s.py", [], ctx.hosts, "abc123")
    assert argv == ["/opt/env/bin/deepspeed", "--hostfile", "/tmp/h", "--launcher", "pdsh", "--no_ssh_check",
                    "--master_addr", "127.0.0.1", "--master_port", "29500", "/s.py", "--ck-run-id=abc123"]


def test_ranks_are_numbered_in_hostfile_then_slot_order() -> None:
    assert rank_layout(select_hosts(HOSTFILE, "node1:1@node3")) == {0: "node1", 1: "node3", 2: "node3"}


def test_a_pair_asked_in_any_order_launches_in_hostfile_order_so_rank_0_is_the_launchers_master() -> None:
    # DeepSpeed's runner and srun both rank nodes in the hostfile's (allocation's) order, whatever the
    # order of --include or --nodelist: node3 + node1 runs as node1 + node3, node1 holding rank 0.
    ctx = context()
    pair = [ActiveHost("node3", (0, 1), HOSTFILE.entry("node3")), ActiveHost("node1", (0, 1), HOSTFILE.entry("node1"))]
    ordered = ctx.in_launch_order(pair)
    assert [h.name for h in ordered] == ["node1", "node3"]
    assert rank_layout(ordered) == {0: "node1", 1: "node1", 2: "node3", 3: "node3"}


def test_the_bundle_lands_once_per_content_in_a_private_directory(tmp_path: Path) -> None:
    first = ship_local(str(tmp_path))
    again = ship_local(str(tmp_path))
    assert first == again == str(tmp_path / f"workloads-{bundle_digest()}")
    assert sorted(p.name for p in Path(first).iterdir()) == sorted(bundle_files())
    assert {"collectives.py", "gpu_health.py", "zero_suite.py", "workload_io.py", "nccl_format.py"} <= set(
        bundle_files())
