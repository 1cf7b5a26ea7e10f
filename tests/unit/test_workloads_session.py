"""A workload launch over any Nodes: the line each transport gives it, the rank layout, the scripts shipped
once (and each way shipping fails), progress per node, and the clean-up of a run that had to be stopped.

The launches here are real processes (a small Python standing in for DeepSpeed's runner) supervised as
any workload is; the nodes are a scripted stand-in, so every path takes milliseconds.
"""

from __future__ import annotations

import shlex
import sys
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from clusterkit.cluster import CommandOutput, LaunchLine, LaunchStyle, ProgressListener
from clusterkit.cluster.local import LocalNodes
from clusterkit.cluster.remote.ssh import SshSettings
from clusterkit.cluster.ssh import SshNodes
from clusterkit.core.inventory import ActiveHost, parse_hostfile, select_hosts
from clusterkit.core.launchline import LaunchPlan
from clusterkit.errors import ClusterkitError
from clusterkit.workloads.session import LAST_HEARD, WorkloadContext, rank_layout
from clusterkit.workloads.ship import PLACED, bundle_digest, bundle_files, ship_local
from tests.fake_nodes import FakeNodes, hosts_named

HOSTFILE = parse_hostfile("node1 slots=2\nnode2 slots=2\nnode3 slots=2\n", "hostfile")
WHERE = "/tmp/clusterkit-1000/workloads-x"


def placed(where: str = WHERE) -> CommandOutput:
    return CommandOutput(0, f"{PLACED} {where}\n")


def fake(*names: str, slots: int = 2) -> FakeNodes:
    return FakeNodes(hosts_named(*names, slots=slots), on_run=lambda host, command: placed())


def ssh_nodes(include: str = "") -> SshNodes:
    return SshNodes(select_hosts(HOSTFILE, include), SshSettings(), hostfile="/home/me/hostfile",
                    whole=select_hosts(HOSTFILE))


def context(nodes: object, **changes: object) -> WorkloadContext:
    values: dict[str, object] = {"nodes": nodes, "python": "/opt/env/bin/python", "cwd": "/repo", "exports": {}}
    return WorkloadContext(**{**values, **changes})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ the line per transport


def test_over_ssh_the_whole_hostfile_needs_no_filter_and_the_run_id_marks_the_script() -> None:
    nodes = ssh_nodes()
    ctx = context(nodes)
    line = nodes.launch_line(ctx.plan("/tmp/ck/collectives.py", ["--ops", "all_reduce"], "abc123"), ctx.hosts,
                             ctx.style())
    assert line.argv == ["/opt/env/bin/deepspeed", "--hostfile", "/home/me/hostfile", "--launcher", "pdsh",
                         "--master_port", "29500", "/tmp/ck/collectives.py", "--ops", "all_reduce",
                         "--ck-run-id=abc123"]
    assert line.task_nodes is None  # pdsh prefixes each line with its host


def test_over_ssh_a_subset_is_named_with_include_even_when_the_command_was_given_one() -> None:
    nodes = ssh_nodes(include="node2@node3")
    ctx = context(nodes)
    argv = nodes.launch_line(ctx.plan("/s.py", [], "abc123", master_port=29601), ctx.hosts, ctx.style()).argv
    assert argv[argv.index("--include") + 1] == "node2:0,1@node3:0,1"
    assert argv[argv.index("--master_port") + 1] == "29601"


def test_over_ssh_one_remote_host_goes_through_pdsh_not_the_local_path() -> None:
    nodes = ssh_nodes()
    ctx = context(nodes)
    one = [ActiveHost("node2", (0,), HOSTFILE.entry("node2"))]
    argv = nodes.launch_line(ctx.plan("/s.py", [], "abc123"), one, ctx.style()).argv
    assert "--force_multi" in argv[:argv.index("/s.py")] and "--no_ssh_check" not in argv
    assert argv[argv.index("--include") + 1] == "node2:0"


def test_this_machine_without_a_hostfile_launches_locally_without_ssh_on_its_slots() -> None:
    here = select_hosts(parse_hostfile("localhost slots=2\n", "h"))[0]
    nodes = LocalNodes(here)
    ctx = context(nodes)
    argv = nodes.launch_line(ctx.plan("/s.py", [], "abc123"), ctx.hosts, ctx.style()).argv
    hostfile = argv[argv.index("--hostfile") + 1]
    assert Path(hostfile).read_text(encoding="utf-8") == "localhost slots=2\n"
    assert argv[argv.index("--hostfile") + 2:] == ["--launcher", "pdsh", "--no_ssh_check", "--master_addr",
                                                   "127.0.0.1", "--master_port", "29500", "/s.py",
                                                   "--ck-run-id=abc123"]


def test_every_workload_asks_for_labelled_lines_its_directory_and_the_runners_exports() -> None:
    style = context(fake("node1"), exports={"PYTHONPATH": "/repo"}).style()
    assert style == LaunchStyle(labelled=True, cwd="/repo", exports={"PYTHONPATH": "/repo"}, overlap=True)


def test_without_exports_given_the_ranks_get_what_deepspeeds_runner_would_add(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".deepspeed_env").write_text("NCCL_DEBUG=INFO\n", encoding="utf-8")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PYTHONPATH", "/site")
    style = WorkloadContext(nodes=fake("node1"), python="python3", cwd=str(tmp_path)).style()
    assert style.exports == {"PYTHONPATH": f"{tmp_path}:/site", "NCCL_DEBUG": "INFO"}


# ------------------------------------------------------------------------------------- rank layout


def test_ranks_are_numbered_in_hostfile_then_slot_order() -> None:
    assert rank_layout(select_hosts(HOSTFILE, "node1:1@node3")) == {0: "node1", 1: "node3", 2: "node3"}


def test_a_pair_asked_in_any_order_launches_in_the_nodes_order_so_rank_0_is_the_launchers_master() -> None:
    # DeepSpeed's runner and srun both rank nodes in the hostfile's (allocation's) order, whatever the
    # order of --include or --nodelist: node3 + node1 runs as node1 + node3, node1 holding rank 0.
    ctx = context(fake("node1", "node2", "node3"))
    node1, _, node3 = ctx.hosts
    ordered = ctx.in_launch_order([node3, node1])
    assert [h.name for h in ordered] == ["node1", "node3"]
    assert rank_layout(ordered) == {0: "node1", 1: "node1", 2: "node3", 3: "node3"}


# ----------------------------------------------------------------------------------------- shipping


def test_the_scripts_are_shipped_once_through_the_nodes_and_found_at_the_path_they_report() -> None:
    nodes = fake("node1", "node2")
    ctx = context(nodes)
    assert ctx.shipped().script("collectives.py") == f"{WHERE}/collectives.py"
    ctx.shipped()
    ships = [c for c in nodes.calls if c.kind == "run"]
    assert len(ships) == 1 and ships[0].hosts == ["node1", "node2"]
    assert bundle_digest() in ships[0].detail  # the bundle travels inside the command


def test_a_node_that_refuses_the_connection_is_named_with_why() -> None:
    def refuse(host: str, command: str) -> CommandOutput:
        if host == "node3":
            raise RuntimeError("authentication to node3 failed")
        return placed()

    nodes = FakeNodes(hosts_named("node1", "node2", "node3"), on_run=refuse)
    with pytest.raises(ClusterkitError, match=r"could not put the workload scripts on 1 node\(s\): "
                                              r"node3: authentication to node3 failed"):
        context(nodes).shipped()


def test_a_node_that_never_answers_costs_its_deadline_and_is_named() -> None:
    nodes = fake("node1", "node2")
    nodes.timeouts = {"node2"}
    with pytest.raises(ClusterkitError, match="node2: node2 gave no answer within the deadline"):
        context(nodes).shipped()


def test_a_node_whose_directory_is_not_its_users_says_so() -> None:
    def not_owned(host: str, command: str) -> CommandOutput:
        return CommandOutput(4, "", "/tmp/clusterkit-1000 is not owned by ck\n") if host == "node2" else placed()

    nodes = FakeNodes(hosts_named("node1", "node2"), on_run=not_owned)
    with pytest.raises(ClusterkitError, match=r"node2: /tmp/clusterkit-1000 is not owned by ck \(exit 4\)"):
        context(nodes).shipped()


def test_a_node_that_holds_the_scripts_at_another_path_asks_for_a_workdir() -> None:
    nodes = FakeNodes(hosts_named("node1", "node2"),
                      on_run=lambda host, command: placed("/scratch/w" if host == "node2" else WHERE))
    with pytest.raises(ClusterkitError, match=r"landed at different paths \(node1: .*, node2: /scratch/w\); .*"
                                              r"--workdir DIR"):
        context(nodes).shipped()


def test_a_shared_workdir_is_written_once_from_here_and_no_node_is_asked(tmp_path: Path) -> None:
    nodes = fake("node1", "node2")
    shipped = context(nodes, workdir=str(tmp_path), shared_workdir=True).shipped()
    assert shipped.directory == str(tmp_path / f"workloads-{bundle_digest()}")
    assert nodes.calls == []


def test_the_bundle_lands_once_per_content_in_a_private_directory(tmp_path: Path) -> None:
    first = ship_local(str(tmp_path))
    again = ship_local(str(tmp_path))
    assert first == again == str(tmp_path / f"workloads-{bundle_digest()}")
    assert sorted(p.name for p in Path(first).iterdir()) == sorted(bundle_files())
    assert {"collectives.py", "gpu_health.py", "zero_suite.py", "workload_io.py", "nccl_format.py"} <= set(
        bundle_files())


# ------------------------------------------------------------------------------ launch and clean-up


def runner(body: str, task_nodes: Sequence[str] | None = None) -> FakeNodes:
    """Fake nodes whose launch line runs ``body`` (Python) here instead of DeepSpeed's runner."""
    nodes = fake("node1", "node2", slots=1)

    def launch_line(plan: LaunchPlan, hosts: Sequence[ActiveHost], style: LaunchStyle) -> LaunchLine:
        from tests.fake_nodes import Call

        nodes.calls.append(Call("launch_line", [h.name for h in hosts], plan))
        return LaunchLine([sys.executable, "-c", textwrap.dedent(body), *plan.script_args], task_nodes,
                          {"CK_FROM_LINE": "1"})

    nodes.launch_line = launch_line  # type: ignore[method-assign]
    return nodes


class Recorded:
    def __init__(self) -> None:
        self.updates: list[tuple[str, str, str]] = []
        self.titles: list[str] = []

    @contextmanager
    def __call__(self, hosts: list[str], title: str) -> Iterator[ProgressListener]:
        self.titles.append(title)
        yield self

    def update(self, host: str, state: str, detail: str = "") -> None:
        self.updates.append((host, state, detail))


def test_a_run_that_ends_well_is_read_per_node_and_rank_and_needs_no_clean_up() -> None:
    nodes = runner("""
        import os
        assert os.environ["CK_FROM_LINE"] == "1"  # the line's environment reaches the runner
        print("node1: [ck:rank=0] @@ck-progress@@ step 1", flush=True)
        print("node1: [ck:rank=0] @@ck-done@@", flush=True)
        print("node2: [ck:rank=1] @@ck-done@@", flush=True)
    """)
    views = Recorded()
    ctx = context(nodes, views=views, cwd="/")
    run = ctx.launch("collectives.py", ["--ops", "all_reduce"], "collectives")
    assert run.ok, run.outcome.lines
    assert run.rank_hosts == {0: "node1", 1: "node2"}
    assert {(line.node, line.rank) for line in run.outcome.lines} == {("node1", 0), ("node2", 1)}
    assert views.titles == ["shipping workload scripts", "collectives"]
    assert ("node1", LAST_HEARD, "rank 0: step 1 (at 0s)") in views.updates
    assert ("node1", "done", "") in views.updates and ("node2", "done", "") in views.updates
    assert [c.kind for c in nodes.calls] == ["run", "launch_line"]
    assert ctx.runs == [run]


def test_srun_style_labels_name_the_node_by_task_number() -> None:
    nodes = runner("""
        print("0: [ck:rank=0] hello", flush=True)
        print("1: [ck:rank=1] hello", flush=True)
    """, task_nodes=["node1", "node2"])
    run = context(nodes, cwd="/").launch("collectives.py", [], "collectives", quiet=True)
    assert {(line.node, line.rank) for line in run.outcome.lines} == {("node1", 0), ("node2", 1)}
    assert run.task_nodes == ["node1", "node2"]


def test_a_run_past_its_deadline_is_killed_and_its_ranks_on_the_nodes_are_ended_by_its_run_id() -> None:
    nodes = runner("""
        import time
        print("node1: [ck:rank=0] started", flush=True)
        time.sleep(60)
    """)
    views = Recorded()
    run = context(nodes, views=views, cwd="/").launch("collectives.py", [], "collectives", deadline_s=1.0)
    assert run.outcome.timed_out and not run.ok
    cleanups = [c for c in nodes.calls if c.kind == "cleanup"]
    assert len(cleanups) == 1 and cleanups[0].hosts == ["node1", "node2"]
    assert cleanups[0].detail == run.outcome.run_id
    assert f"--ck-run-id={run.outcome.run_id}" in run.outcome.argv
    assert run.outcome.cleanup == {"node1": "", "node2": ""}
    assert ("node2", "timed out", "ranks [1] not done; rank 1: nothing heard from it") in views.updates


def test_a_failed_rank_stops_the_run_after_the_grace_and_a_node_that_cannot_clean_up_says_so() -> None:
    nodes = runner("""
        import time
        print("node2: [ck:rank=1] launch.py: exits with return code = 1", flush=True)
        time.sleep(60)
    """)
    ctx = context(nodes, grace_s=0.2, cwd="/")
    ctx.shipped()
    nodes.timeouts = {"node2"}
    run = ctx.launch("collectives.py", [], "collectives", deadline_s=30.0, quiet=True)
    assert run.outcome.stopped_after_failure and not run.outcome.timed_out
    assert run.outcome.cleanup["node1"] == ""
    assert run.outcome.cleanup["node2"].startswith("clean-up failed: node2 gave no answer")


def test_a_subset_launches_on_its_hosts_only_and_the_plan_carries_the_port_asked() -> None:
    nodes = runner("print('node2: [ck:rank=0] hi')")
    ctx = context(nodes, cwd="/")
    run = ctx.launch("collectives.py", [], "pair", hosts=[ctx.hosts[1]], master_port=29601, quiet=True)
    line = next(c for c in nodes.calls if c.kind == "launch_line")
    assert line.hosts == ["node2"] and line.detail.master_port == 29601
    assert line.detail.script == f"{WHERE}/collectives.py" and run.hosts == ["node2"]
    assert shlex.join(run.outcome.argv).endswith(f"--ck-run-id={run.outcome.run_id}")
