"""The supervised run: output kept per node and rank, a deadline that holds, and clean-up by run id.

The "launchers" here are small shell scripts that print what DeepSpeed's runner and pdsh print;
the processes, pipes, process groups and signals are real.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusterkit.cluster.shell import kill_by_run_id_command
from clusterkit.workloads.run import (
    Launch,
    LogLine,
    new_run_id,
    ranks_of,
    split_line,
    supervise,
)

HOSTS = ["node1", "node2"]


def shell(script: str) -> list[str]:
    return ["bash", "-c", script]


def test_pdsh_prefixes_and_rank_tags_become_node_and_rank() -> None:
    assert split_line("node2: [ck:rank=3] loss 0.5", HOSTS) == ("node2", 3, "loss 0.5")
    assert split_line("node1: [INFO] launch.py: spawned", HOSTS) == ("node1", None, "[INFO] launch.py: spawned")
    # Not a host of this launch: a line of the head's own (an exception name, pdsh itself).
    assert split_line("RuntimeError: launcher 'pdsh' not installed.", HOSTS) == (
        None, None, "RuntimeError: launcher 'pdsh' not installed.")
    assert split_line("pdsh@node1: node2: ssh exited with exit code 255", HOSTS)[0] is None
    # A local launch has one host and no pdsh: every line is that host's.
    assert split_line("[ck:rank=0] hello", ["localhost"]) == ("localhost", 0, "hello")
    # One remote host goes through pdsh all the same (--force_multi): its prefix comes off.
    assert split_line("node2: [ck:rank=0] hello", ["node2"]) == ("node2", 0, "hello")


def test_a_run_keeps_every_line_with_its_node_and_rank_and_finds_results() -> None:
    script = ("echo 'node1: [ck:rank=0] @@ck-progress@@ all_reduce 1 MiB'; "
              "echo 'node2: [ck:rank=1] warming up' >&2; "
              "echo 'node1: [ck:rank=0] @@ck-result@@ {\"kind\": \"collectives\", \"world_size\": 2}'; "
              "echo 'node1: [ck:rank=0] @@ck-done@@'; echo 'node2: [ck:rank=1] @@ck-done@@'")
    seen: list[LogLine] = []
    outcome = supervise(Launch(shell(script), cwd="/", deadline_s=30, hosts=HOSTS), on_line=seen.append)
    assert outcome.ok
    assert len(seen) == len(outcome.lines) == 5
    assert outcome.results("collectives") == [{"kind": "collectives", "world_size": 2}]
    assert outcome.done_ranks() == {0, 1}
    assert outcome.last_progress() == {0: "all_reduce 1 MiB"}
    assert [line.render() for line in outcome.tail(5)] == ["[node2 rank 1] warming up"]
    assert {line.stream for line in outcome.lines} == {"out", "err"}


def test_the_deadline_kills_the_whole_process_group_and_calls_the_clean_up(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (f"sleep 300 & echo $! > {pid_file}; echo 'node1: [ck:rank=0] @@ck-progress@@ step 1'; wait")
    cleaned: list[str] = []
    run_id = new_run_id()
    started = time.monotonic()
    outcome = supervise(Launch(shell(script), cwd="/", deadline_s=2, hosts=HOSTS, run_id=run_id),
                        cleanup=lambda rid: cleaned.append(rid) or {"node1": "killed 0"})
    assert time.monotonic() - started < 15
    assert outcome.timed_out and not outcome.ok
    assert cleaned == [run_id]
    assert outcome.cleanup == {"node1": "killed 0"}
    grandchild = int(pid_file.read_text())
    for _ in range(50):
        if not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the launcher's child outlived the deadline")
    assert ranks_of(outcome, [0, 1]) == {"done": [], "silent": [1], "unfinished": [0]}


def test_a_failed_rank_ends_the_run_after_the_grace_period_not_at_the_deadline() -> None:
    script = ("echo 'node2: [2026-01-01 00:00:00,000] [INFO] [launch.py:319:sigkill_handler] "
              "Process 4242 exits with return code = 1'; sleep 300")
    started = time.monotonic()
    outcome = supervise(Launch(shell(script), cwd="/", deadline_s=120, hosts=HOSTS, grace_s=1))
    assert time.monotonic() - started < 20
    assert outcome.stopped_after_failure and not outcome.timed_out


def test_a_launcher_that_is_not_there_is_a_start_error() -> None:
    outcome = supervise(Launch(["/nonexistent/bin/deepspeed"], cwd="/", deadline_s=5, hosts=HOSTS))
    assert outcome.start_error is not None and "/nonexistent/bin/deepspeed" in outcome.start_error
    assert not outcome.ok


def test_clean_up_kills_the_processes_that_carry_the_run_id_and_nothing_else() -> None:
    run_id = new_run_id()
    marked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", f"--ck-run-id={run_id}"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", f"--ck-run-id={new_run_id()}"])
    try:
        time.sleep(0.2)
        done = subprocess.run(["sh", "-c", kill_by_run_id_command(run_id)], capture_output=True, text=True,
                              timeout=20, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "killed 1"
        assert marked.wait(timeout=10) == -9
        assert other.poll() is None
    finally:
        for proc in (marked, other):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_run_id_that_could_be_a_pattern_is_refused() -> None:
    with pytest.raises(ValueError):
        kill_by_run_id_command(".*")


def test_the_environment_reaches_the_launcher() -> None:
    outcome = supervise(Launch(shell("echo \"node1: $CK_PROBE\""), cwd="/", deadline_s=10, hosts=HOSTS,
                               env={"CK_PROBE": "seen"}))
    assert [line.text for line in outcome.lines] == ["seen"]
    assert os.environ.get("CK_PROBE") is None
