"""``clusterkit stacks``: grouping, judging and sampling as pure functions; taking the stacks over a
stand-in Nodes (py-spy put where missing, a silent node named, the rest shown); the node side's parsers."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from clusterkit.cluster import CommandOutput, LaunchStyle
from clusterkit.cluster.nodes import launch_env
from clusterkit.node.collect.pystacks import (
    denied,
    dump_with_signal,
    hook_file,
    hook_is_live,
    stack_of,
    threads_from_faulthandler,
    threads_from_pyspy,
)
from clusterkit.stacks.group import group_ranks, place_of, rank_list
from clusterkit.stacks.judge import judge_rounds
from clusterkit.stacks.model import Frame, Round, node_of, short_path
from clusterkit.stacks.report import build_report, report_doc
from clusterkit.stacks.sample import folded_frames, time_share
from clusterkit.stacks.ship import HOOK_SOURCE, read_probe
from clusterkit.stacks.take import StacksOptions, take_stacks
from tests.fake_nodes import FakeNodes, hosts_named

SITE = "/opt/env/lib/python3.11/site-packages"
TRAIN = "/home/u/train.py"


def frame(name: str, file: str, line: int, code: str = "") -> dict[str, Any]:
    return {"name": name, "file": file, "line": line, "code": code}


ALL_REDUCE = [frame("all_reduce", f"{SITE}/torch/distributed/distributed_c10d.py", 3252, "work.wait()"),
              frame("wrapper", f"{SITE}/torch/distributed/c10d_logger.py", 83),
              frame("step", TRAIN, 52, "dist.all_reduce(grads)"), frame("<module>", TRAIN, 99)]
BARRIER = [frame("barrier", f"{SITE}/torch/distributed/distributed_c10d.py", 4800),
           frame("step", TRAIN, 60, "dist.barrier()"), frame("<module>", TRAIN, 99)]
SLEEP = [frame("prepare", TRAIN, 30, "time.sleep(3600)"), frame("step", TRAIN, 50), frame("<module>", TRAIN, 99)]
LOADER = [frame("_get_data", f"{SITE}/torch/utils/data/dataloader.py", 1120),
          frame("__next__", f"{SITE}/torch/utils/data/dataloader.py", 631),
          frame("step", TRAIN, 88, "batch = next(loader)"), frame("<module>", TRAIN, 99)]
LOCKED = [frame("step", TRAIN, 85, "with LOCK:"), frame("<module>", TRAIN, 99)]


def rank(r: int, frames: list[dict[str, Any]] | None, *, local: int | None = None, world: int = 4,
         **extra: Any) -> dict[str, Any]:
    threads = [] if frames is None else [{"name": "MainThread", "main": True, "frames": frames}]
    return {"pid": 100 + r, "rank": r, "local": r % 2 if local is None else local, "world": world, "state": "S",
            "job": "10.0.0.1:29500", "gpu": r % 2, "method": "py-spy" if frames is not None else "",
            "threads": threads, "paused_at_most_s": 0.004, "took_s": 0.004, **extra}


def job(where: dict[int, list[dict[str, Any]] | None], **per_rank: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Agent replies per host for ranks 0-3 (node1: 0,1; node2: 2,3) at the places given."""
    replies: dict[str, dict[str, Any]] = {"node1": {"ranks": []}, "node2": {"ranks": []}}
    for r, frames in where.items():
        replies["node1" if r < 2 else "node2"]["ranks"].append(
            rank(r, frames, **{"world": len(where), **per_rank.get(str(r), {})}))
    return replies


def round_of(replies: dict[str, dict[str, Any]], at: float = 0.0) -> Round:
    return Round([node_of(host, reply) for host, reply in replies.items()], at, 0.1)


def hung(where: dict[int, list[dict[str, Any]] | None], **per_rank: dict[str, Any]) -> list[Round]:
    """The same stacks in two dumps 2 s apart."""
    return [round_of(job(where, **per_rank), 0.0), round_of(job(where, **per_rank), 2.0)]


def failed(rounds: list[Round]) -> list[tuple[str, str]]:
    return [(f.check_id, f.host) for f in judge_rounds(rounds)]


# ------------------------------------------------------------------------------------------- grouping


def test_identical_stacks_are_printed_once_with_their_ranks_and_the_odd_one_first() -> None:
    groups = group_ranks(round_of(job({0: ALL_REDUCE, 1: ALL_REDUCE, 2: LOADER, 3: ALL_REDUCE})).ranks)
    assert [g.describe() for g in groups] == [
        "rank 2 (node2, GPU 0) in DataLoader `__next__` train.py:88 `batch = next(loader)`",
        "ranks 0-1,3 (node[1-2]) in `all_reduce` (train.py:52)"]


def test_ranks_on_nodes_whose_env_lies_elsewhere_still_group_together() -> None:
    elsewhere = [dict(f, file=f["file"].replace("/opt/env", "/scratch/venv")) for f in ALL_REDUCE]
    groups = group_ranks(round_of(job({0: ALL_REDUCE, 1: elsewhere})).ranks)
    assert len(groups) == 1 and [r.rank for r in groups[0].ranks] == [0, 1]


def test_a_rank_one_line_further_down_is_another_place() -> None:
    """A rank that skipped an all_reduce waits in the next one: only the line tells them apart."""
    further = [dict(f, line=54) if f["name"] == "step" else f for f in ALL_REDUCE]
    assert len(group_ranks(round_of(job({0: ALL_REDUCE, 1: further})).ranks)) == 2


def test_places_are_named_by_what_the_main_thread_does() -> None:
    def place(frames: list[dict[str, Any]]) -> tuple[str, str, str]:
        found = place_of([Frame(f["name"], f["file"], f["line"], f["code"]) for f in frames])
        return found.kind, found.op, found.site.place if found.site else ""

    assert place(ALL_REDUCE) == ("collective", "all_reduce", "train.py:52")
    assert place(BARRIER) == ("collective", "barrier", "train.py:60")
    assert place(LOADER) == ("dataloader", "__next__", "train.py:88")
    assert place(LOCKED) == ("lock", "step", "train.py:85")
    assert place(SLEEP) == ("code", "prepare", "train.py:30")


def test_native_frames_are_shown_but_neither_group_nor_name_a_place() -> None:
    def native(address: str) -> list[dict[str, Any]]:
        return [frame("clock_nanosleep", "libc.so.6", 0), frame(address, "libc.so.6", 0), *SLEEP]

    groups = group_ranks(round_of(job({0: native("0x7f140484524a"), 1: native("0x7f99aa00124a")})).ranks)
    assert len(groups) == 1 and groups[0].frames[0].name == "clock_nanosleep"
    assert groups[0].describe() == "ranks 0-1 (node1) in `prepare` train.py:30 `time.sleep(3600)`"


def test_rank_lists_are_in_host_list_form() -> None:
    assert rank_list([0, 1, 2, 3, 4, 6, 7, 15, 14]) == "0-4,6-7,14-15"
    assert short_path(f"{SITE}/deepspeed/runtime/zero/stage_1_and_2.py") == "deepspeed/runtime/zero/stage_1_and_2.py"
    assert short_path("torch/distributed/distributed_c10d.py") == "torch/distributed/distributed_c10d.py"


# -------------------------------------------------------------------------------------------- judging


@pytest.mark.parametrize(("odd", "check", "says"), [
    (SLEEP, "hang-elsewhere", "rank 2 (node2, GPU 0) in `prepare` train.py:30 `time.sleep(3600)` while ranks 0-1,3"),
    (BARRIER, "hang-desync", "the ranks called different collectives"),
    (LOADER, "hang-dataloader", "its DataLoader gives no batch"),
    (LOCKED, "hang-lock", "waits on a lock"),
])
def test_a_hang_names_the_rank_not_where_the_others_wait(odd: list[dict[str, Any]], check: str, says: str) -> None:
    findings = judge_rounds(hung({0: ALL_REDUCE, 1: ALL_REDUCE, 2: odd, 3: ALL_REDUCE}))
    assert [(f.check_id, f.host) for f in findings] == [(check, "node2")]
    assert says in findings[0].message
    assert "wait in `all_reduce` (train.py:52)" in findings[0].message


def test_a_job_whose_stacks_move_is_never_flagged_whatever_one_dump_shows() -> None:
    rounds = [round_of(job({0: ALL_REDUCE, 1: ALL_REDUCE, 2: SLEEP, 3: ALL_REDUCE}), 0.0),
              round_of(job({0: ALL_REDUCE, 1: ALL_REDUCE, 2: LOADER, 3: ALL_REDUCE}), 2.0)]
    assert failed(rounds) == []
    assert failed(rounds[:1]) == []  # one dump cannot tell a hang from a job that runs


def test_a_frozen_nodes_ranks_are_named_with_the_node_to_drain() -> None:
    stopped = {"state": "T", "stopped": True, "method": ""}
    rounds = hung({0: ALL_REDUCE, 1: ALL_REDUCE, 2: None, 3: None}, **{"2": stopped, "3": stopped})
    findings = judge_rounds(rounds)
    assert [(f.check_id, f.host) for f in findings] == [("rank-stopped", "node2")]
    assert "every rank on node2 (ranks 2-3 (node2)) is stopped (state T): the node is frozen" in findings[0].message
    assert "scontrol update nodename=node2 state=drain" in findings[0].fix
    assert next(g.describe() for g in group_ranks(rounds[-1].ranks)).startswith("ranks 2-3 (node2) stopped (state T)")


def test_a_silent_node_is_named_and_the_rest_still_judged() -> None:
    rounds = hung({0: ALL_REDUCE, 1: LOADER})
    for r in rounds:
        r.nodes[1].error = "node2 gave no answer within the deadline"
        r.nodes[1].ranks = []
    assert failed(rounds) == [("stacks-node-silent", "node2"), ("hang-dataloader", "node1")]


def test_every_rank_waiting_with_ranks_missing_names_the_missing_ones() -> None:
    of_four = {str(r): {"world": 4} for r in range(3)}
    assert failed(hung({0: ALL_REDUCE, 1: ALL_REDUCE, 2: ALL_REDUCE}, **of_four)) == [("ranks-missing", "cluster")]
    assert failed(hung({0: ALL_REDUCE, 1: ALL_REDUCE, 2: ALL_REDUCE})) == [("hang-all-waiting", "cluster")]


def test_ranks_py_spy_may_not_read_say_why_and_how_to_fix_it() -> None:
    refused = {"method": "signal", "fallback_from": "py-spy: Permission Denied"}
    findings = judge_rounds(hung({0: ALL_REDUCE, 1: ALL_REDUCE}, **{"0": refused, "1": refused}))
    denied_ = [f for f in findings if f.check_id == "stacks-ptrace-denied"]
    assert len(denied_) == 1 and denied_[0].severity.value == "warning"
    assert "read instead through the stack hook" in denied_[0].message
    assert "kernel.yama.ptrace_scope=0" in denied_[0].fix and "CAP_SYS_PTRACE" in denied_[0].fix
    unread = {"method": "", "denied": True, "error": "py-spy: Permission Denied"}
    findings = judge_rounds(hung({0: ALL_REDUCE, 1: None}, **{"1": unread}))
    assert [(f.check_id, f.severity.value) for f in findings] == [("stacks-ptrace-denied", "error")]


def test_a_rank_read_neither_way_is_named_as_it_may_be_the_culprit() -> None:
    unread = {"method": "", "error": "py-spy: Failed to find python version from target process"}
    findings = judge_rounds(hung({0: ALL_REDUCE, 1: ALL_REDUCE, 2: None}, **{"2": unread}))
    assert [(f.check_id, f.host) for f in findings] == [("stacks-unread", "node2")]
    assert "rank 2 (node2, GPU 0) could not be read: py-spy: Failed to find python version" in findings[0].message
    assert findings[0].fix == "look at it by hand on node2: py-spy dump --pid 102"


# ------------------------------------------------------------------------------------------ straggler


def folded(waiting: int, working: int) -> dict[str, int]:
    return {"thread (7): MainThread;<module> (train.py:99);step (train.py:52);wrapper (torch/distributed/"
            "c10d_logger.py:83);all_reduce (torch/distributed/distributed_c10d.py:3252)": waiting,
            "thread (7): MainThread;<module> (train.py:99);step (train.py:48);backward (train.py:40)": working,
            "thread (9): Thread-1;run (threading.py:982)": 200}


def test_a_straggler_is_the_rank_whose_time_goes_elsewhere_while_its_peers_wait() -> None:
    sampled = {str(r): {"world": 3, "sample": {"folded": folded(*counts)}}
               for r, counts in enumerate([(150, 50), (2, 198), (130, 70)])}
    moving = [round_of(job({0: SLEEP, 1: SLEEP, 2: SLEEP}), 0.0),
              round_of(job({0: ALL_REDUCE, 1: ALL_REDUCE, 2: ALL_REDUCE}, **sampled), 2.0)]
    findings = judge_rounds(moving)
    assert [(f.check_id, f.host) for f in findings] == [("rank-straggler", "node1")]
    assert findings[0].message == ("rank 1 (node1, GPU 1) is the straggler: its peers spend 70% of their time waiting "
                                   "in collectives, it spends 1%; its time goes to `backward` train.py:40 99%")


def test_a_slow_rank_caught_at_one_line_in_both_dumps_is_no_hang_when_its_samples_show_it_moving() -> None:
    sampled = {str(r): {"sample": {"folded": folded(*counts)}}
               for r, counts in enumerate([(150, 50), (2, 198), (130, 70)])}
    caught_twice = hung({0: ALL_REDUCE, 1: SLEEP, 2: ALL_REDUCE}, **sampled)
    assert [f.check_id for f in judge_rounds(caught_twice)] == ["rank-straggler"]
    still = {str(r): {"sample": {"folded": folded(200, 0)}} for r in range(3)}
    assert [f.check_id for f in judge_rounds(hung({0: ALL_REDUCE, 1: SLEEP, 2: ALL_REDUCE}, **still))] == [
        "hang-elsewhere"]


def test_folded_stacks_keep_the_main_thread_innermost_first() -> None:
    main, frames = folded_frames("thread (7): MainThread;<module> (train.py:99);backward (train.py:40)")
    assert main and [f.place for f in frames] == ["train.py:40", "train.py:99"]
    assert folded_frames("thread (9): Thread-1;run (threading.py:982)")[0] is False
    share = time_share(node_of("n", {"ranks": [rank(0, ALL_REDUCE, sample={"folded": folded(30, 10)})]}).ranks[0])
    assert share is not None and share.samples == 40 and share.waiting == 0.75


# ---------------------------------------------------------------------------------- the node's parsers


def test_faulthandler_dumps_are_read_with_the_main_thread_last() -> None:
    text = ('Thread 0x00007fe382dbc6c0 (most recent call first):\n'
            '  File "/usr/lib/python3.11/threading.py", line 320 in wait\n\n'
            'Current thread 0x00007fe383c02b80 (most recent call first):\n'
            '  File "/home/u/train.py", line 52 in step\n  File "/home/u/train.py", line 99 in <module>\n')
    threads = threads_from_faulthandler(text)
    assert [t["main"] for t in threads] == [False, True]
    assert [(f["name"], f["line"]) for f in threads[1]["frames"]] == [("step", 52), ("<module>", 99)]


def test_py_spy_json_and_its_refusal_are_read() -> None:
    dumped = json.dumps([{"thread_name": "MainThread", "os_thread_id": 7, "active": False, "frames": [
        {"name": "step", "filename": "/nonexistent/train.py", "short_filename": "train.py", "line": 52}]}])
    threads = threads_from_pyspy(dumped)
    assert threads[0]["main"] and threads[0]["frames"][0]["short"] == "train.py"
    assert denied("Permission Denied: Try running again with elevated permissions by going 'sudo env ...'")
    assert not denied("Error: Failed to find python version from target process")


# ------------------------------------------------------------------------------- over a stand-in Nodes


def test_py_spy_is_put_where_missing_and_a_silent_node_is_named_with_the_rest_shown(tmp_path: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch
                                                                                    ) -> None:
    binary = tmp_path / "py-spy"
    binary.write_bytes(b"#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("CLUSTERKIT_PY_SPY", str(binary))
    cache = "/tmp/clusterkit-1000"

    def on_run(host: str, command: str) -> CommandOutput:
        if command.startswith("chmod"):
            return CommandOutput(0)
        have = "@@ck-cache-have py-spy-" if host == "node1" else "nothing"
        name = next(w for w in command.split('"') if w.startswith("$d/py-spy-")).removeprefix("$d/")
        return CommandOutput(0, f"@@ck-cache {cache}\n" + (f"{have}{name.removeprefix('py-spy-')}\n"))

    replies = job({0: ALL_REDUCE, 1: ALL_REDUCE, 2: LOADER, 3: ALL_REDUCE})
    nodes = FakeNodes(hosts_named("node1", "node2", "node3"), on_run=on_run,
                      on_agent=lambda host, args: replies[host], timeouts={"node3"})
    slept: list[float] = []
    taken = take_stacks(nodes, StacksOptions(dumps=2, every_s=2.0), sleep=slept.append)
    puts = [c for c in nodes.calls if c.kind == "put"]
    assert [c.hosts for c in puts] == [["node2"]]  # node1 holds it, node3 does not answer
    agent_calls = [c for c in nodes.calls if c.kind == "agent"]
    assert len(agent_calls) == 2 and agent_calls[0].detail[:3] == ["stacks", "--via", "auto"]
    assert len(slept) == 1 and 0 < slept[0] <= 2.0
    report = build_report(taken, StacksOptions())
    assert [n.host for n in report.last.silent] == ["node3"]
    assert next(g.describe() for g in report.groups).startswith("rank 2 (node2, GPU 0) in DataLoader")
    assert [f.check_id for f in report.findings] == ["stacks-node-silent", "hang-dataloader"]
    doc = report_doc(report)
    assert doc["dumps"][1]["nodes"][0]["ranks"][0]["paused_at_most_s"] == 0.004
    assert doc["dumps"][1]["nodes"][0]["ranks"][0]["threads"][0]["frames"][0]["name"] == "all_reduce"


def test_signal_only_ships_no_py_spy_and_a_cache_probe_is_read() -> None:
    nodes = FakeNodes(hosts_named("node1"), on_agent=lambda host, args: {"ranks": []})
    take_stacks(nodes, StacksOptions(via="signal", dumps=1))
    assert [c.kind for c in nodes.calls] == ["agent"]
    assert read_probe("banner\n@@ck-cache /tmp/clusterkit-0\n@@ck-cache-have py-spy-ab\n") == (
        "/tmp/clusterkit-0", {"py-spy-ab"})


def test_native_frames_that_cannot_be_unwound_leave_the_python_ones_read_by_py_spy(tmp_path: Path) -> None:
    fake = tmp_path / "py-spy"
    main_thread = json.dumps([{"thread_name": "MainThread", "frames": [
        {"name": "step", "filename": "/nonexistent/train.py", "line": 52}]}])
    fake.write_text(f"#!/bin/sh\ncase \"$*\" in *--native*) echo 'Error: Failed to unwind' >&2; exit 1;; esac\n"
                    f"echo '{main_thread}'\n")
    fake.chmod(0o755)
    rank = {"pid": 1, "state": "S", "hook": None}
    got = stack_of(rank, str(fake), "auto", native=True, nonblocking=False, timeout_s=5)
    assert got["method"] == "py-spy" and got["native_error"] == "py-spy: Error: Failed to unwind"
    assert got["threads"][0]["frames"][0]["name"] == "step"


# ------------------------------------------------------------------------------------- the launch hook


def test_the_launch_hook_writes_a_ranks_stacks_on_the_signal_and_runs_the_sitecustomize_it_hides(
        tmp_path: Path) -> None:
    hook_dir = tmp_path / "clusterkit-1000" / "stacks-hook-0123"
    hook_dir.mkdir(parents=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK_SOURCE.read_text())
    hidden = tmp_path / "dist"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text("import os\nos.environ['HIDDEN_RAN'] = '1'\n")
    script = ("import os, time\ndef waiting_here():\n    print(os.environ.get('HIDDEN_RAN'), flush=True)\n"
              "    time.sleep(60)\nwaiting_here()\n")
    rank = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{hook_dir}:{hidden}", "RANK": "0",
                                 "LOCAL_RANK": "0"})
    try:
        assert rank.stdout is not None and rank.stdout.readline().strip() == "1"
        assert hook_is_live({"pid": rank.pid, "hook": hook_file(str(hook_dir), rank.pid), "started_at": None})
        found = dump_with_signal(hook_file(str(hook_dir), rank.pid), rank.pid)
        assert found["method"] == "signal", found
        main = next(t for t in found["threads"] if t["main"])
        assert main["frames"][0]["name"] == "waiting_here" and main["frames"][0]["code"] == ""
        assert rank.poll() is None  # the signal did not end it
    finally:
        rank.kill()
        rank.wait()


def hooked_rank(tmp_path: Path, script: str) -> tuple[subprocess.Popen[str], Path]:
    """A rank started with the launch hook first on its path, and the hook's directory."""
    hook_dir = tmp_path / "clusterkit-1000" / "stacks-hook-0123"
    hook_dir.mkdir(parents=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK_SOURCE.read_text())
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(hook_dir), "RANK": "0",
                                 "LOCAL_RANK": "0"}), hook_dir


def test_a_job_that_takes_the_signal_for_itself_is_never_sent_it(tmp_path: Path) -> None:
    # submitit's requeue handler is SIGUSR2: the hook steps aside and the reader leaves the rank alone.
    script = ("import signal, time\nsignal.signal(signal.SIGUSR2, lambda *a: print('requeued', flush=True))\n"
              "print('ready', flush=True)\ntime.sleep(60)\n")
    rank, hook_dir = hooked_rank(tmp_path, script)
    try:
        assert rank.stdout is not None and rank.stdout.readline().strip() == "ready"
        path = hook_file(str(hook_dir), rank.pid)
        assert not Path(path).exists()
        assert not hook_is_live({"pid": rank.pid, "hook": path, "started_at": None})
    finally:
        rank.kill()
        rank.wait()


def test_a_new_rank_removes_the_files_of_ranks_gone_from_its_host_and_keeps_the_live_ones(tmp_path: Path) -> None:
    import os
    import socket

    stacks = tmp_path / "clusterkit-1000" / "stacks"
    stacks.mkdir(parents=True)
    host = socket.gethostname()
    gone, live, other_host = (stacks / f"{host}-4194300.txt", stacks / f"{host}-{os.getpid()}.txt",
                              stacks / "elsewhere-4194300.txt")
    for path in (gone, live, other_host):
        path.write_text("")
    rank, _ = hooked_rank(tmp_path, "print('ready', flush=True)")
    assert rank.stdout is not None and rank.stdout.readline().strip() == "ready"
    rank.wait()
    assert not gone.exists() and live.exists() and other_host.exists()


def test_a_rank_that_does_not_catch_the_signal_is_not_live_even_with_a_fresh_file(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "file.txt").write_text("")
        assert not hook_is_live({"pid": sleeper.pid, "hook": str(tmp_path / "file.txt"), "started_at": None})
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_launch_puts_the_hook_right_after_the_launch_directory_on_the_ranks_pythonpath() -> None:
    hook = "/tmp/clusterkit-1000/stacks-hook-01"
    style = LaunchStyle(cwd="/repo", exports={"A": "1"}, pythonpath_first=(hook,))
    assert launch_env(style, "/mine") == {"A": "1", "PYTHONPATH": f"/repo:{hook}:/mine"}
    assert launch_env(LaunchStyle(exports={"A": "1"}), "/mine") == {"A": "1"}
    # on a PYTHONPATH the launch exports already (the flight recorder's, the launch directory first)
    recorder = replace(style, exports={"PYTHONPATH": "/repo:/runs/job/flightrec:/mine"})
    assert launch_env(recorder, "/mine")["PYTHONPATH"] == f"/repo:{hook}:/runs/job/flightrec:/mine"


@pytest.mark.parametrize(("flags", "says"), [
    (["--dumps", "0"], "--dumps 0: must be 1 to 20"),
    (["--timeout", "inf"], "--timeout inf: must be 0.1 to 600 seconds"),
    (["--sample", "3", "--via", "signal"], "--sample samples with py-spy: it cannot go with --via signal"),
])
def test_bad_flags_are_one_line_usage_errors_before_any_node_is_asked(flags: list[str], says: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from clusterkit.cli import main

    assert main(["stacks", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"clusterkit: error: {says}"]


def test_the_monitors_stacks_screen_and_its_stall_record_say_what_the_command_says() -> None:
    # monitor's `t` key shows this text, and `monitor --once --json` carries the record beside a stall
    from clusterkit.commands.monitor import stacks_record
    from clusterkit.stacks.take import Taken
    from clusterkit.ui.stacks import as_text

    report = build_report(Taken(hung({0: ALL_REDUCE, 1: ALL_REDUCE, 2: LOADER, 3: ALL_REDUCE}), {}), StacksOptions())
    text = as_text(report).plain
    assert "rank 2 (node2, GPU 0) in DataLoader `__next__` train.py:88" in text
    assert "hang-dataloader" in text and "\x1b[" not in text
    record = stacks_record(report)
    assert record["moving"] is False and [f["check_id"] for f in record["findings"]] == ["hang-dataloader"]
    assert [g["ranks"] for g in record["groups"]] == [[2], [0, 1, 3]]
