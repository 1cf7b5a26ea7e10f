"""Streams over Slurm at the unit level: the step each node's stream runs as, and how its channel ends.

``srun`` here is a stand-in on PATH that behaves as srun does for one task: it records its argv, runs
the task (``/bin/sh -c COMMAND``) with its own stdin, forwards the end of its input, exits with the
task's status (saying so on stderr, as srun does), and kills the task on two SIGINTs within a second.
The real srun on a real Slurm is tests/cluster/test_slurm_monitor.py.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zipfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest

from clusterkit.cluster.remote.agent import agent_zipapp
from clusterkit.cluster.remote.slurm import Allocation, SlurmError
from clusterkit.cluster.remote.slurm_agent import node_agent_dir
from clusterkit.cluster.remote.slurm_stream import SlurmStreamOpener, agent_stream_command, stream_srun_argv
from clusterkit.cluster.remote.stream import Backoff, LineStream, ProcessOpener, StreamState
from clusterkit.node.collect.sampler import SAMPLE_MARKER
from clusterkit.node.facts import SlurmJobFacts

FAKE_SRUN = r'''#!PYTHON
import json, os, signal, subprocess, sys, time
record = os.environ["FAKE_SRUN_DIR"]
with open(os.path.join(record, "argv.json"), "w") as out:
    json.dump(sys.argv[1:], out)
task = subprocess.Popen(sys.argv[-3:])
with open(os.path.join(record, "pids"), "w") as out:
    out.write(f"{os.getpid()} {task.pid}\n")
interrupts = []
def interrupted(signum, frame):
    interrupts.append(time.monotonic())
    if len(interrupts) >= 2 and interrupts[-1] - interrupts[-2] < 1:
        task.kill()
        sys.stderr.write("srun: error: gpu02: task 0: Killed\n")
        sys.exit(137)
    sys.stderr.write("srun: interrupt (one more within 1 sec to abort)\n")
signal.signal(signal.SIGINT, interrupted)
code = task.wait()
if code:
    sys.stderr.write(f"srun: error: gpu02: task 0: Exited with exit code {code}\n")
sys.exit(code)
'''

FAST = Backoff(initial_s=0.1, factor=2, max_s=0.4, jitter=0)


def job(**changes: object) -> SlurmJobFacts:
    values: dict[str, object] = {"job_id": "42", "partition": "gpu", "nodes": ["gpu01", "gpu02", "gpu03"],
                                 "time_limit_s": 3600, "time_left_s": 3000, "cpus_per_task": None}
    values.update(changes)
    return SlurmJobFacts(**values)  # type: ignore[arg-type]


@pytest.fixture
def fake_srun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in srun first on PATH; returns the directory it records into (argv.json, pids)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "srun-record"
    bin_dir.mkdir()
    record.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(FAKE_SRUN.replace("PYTHON", sys.executable, 1))
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SRUN_DIR", str(record))
    return record


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # reaped since the signal above
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def started_pids(record: Path) -> tuple[int, int]:
    wait_for(lambda: (record / "pids").is_file() and (record / "pids").read_text().endswith("\n"))
    srun, task = (record / "pids").read_text().split()
    return int(srun), int(task)


def read_all(channel: object, timeout: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = channel.read(0.1)  # type: ignore[attr-defined]
        if data is None:
            return got
        got += data
    raise AssertionError(f"the channel did not end; so far {got!r}")


def test_each_nodes_stream_is_one_task_on_that_node_overlapping_the_jobs_steps() -> None:
    alloc = Allocation(job(gpus_per_node={"gpu01": 8, "gpu02": 4}))
    assert stream_srun_argv(alloc, "gpu02", "echo hi") == [
        "srun", "--jobid=42", "--overlap", "--nodes=1", "--ntasks=1", "--nodelist=gpu02", "--kill-on-bad-exit=0",
        "--chdir=/", "--job-name=clusterkit-stream", "--gres=gpu:4", "/bin/sh", "-c", "echo hi"]
    # No --label (lines come through as printed) and no --time (a stream lasts as long as the job).
    assert "--gres=gpu:0" not in stream_srun_argv(alloc, "gpu03", "true")
    assert not any(word.startswith(("--label", "--time")) for word in stream_srun_argv(alloc, "gpu03", "true"))


def test_the_step_runs_without_the_allocations_step_shaping_variables(fake_srun: Path) -> None:
    opener = SlurmStreamOpener(Allocation(job()), {**os.environ, "SLURM_NTASKS": "24", "SLURM_CPUS_PER_TASK": "8",
                                                   "CKT_KEPT": "kept"})
    channel = opener("gpu02", 'echo "${SLURM_NTASKS:-unset} ${SLURM_CPUS_PER_TASK:-unset} $CKT_KEPT"')
    try:
        assert read_all(channel) == b"unset unset kept\n"
    finally:
        channel.close()
    assert json.loads((fake_srun / "argv.json").read_text())[:6] == [
        "--jobid=42", "--overlap", "--nodes=1", "--ntasks=1", "--nodelist=gpu02", "--kill-on-bad-exit=0"]


def test_a_node_outside_the_job_is_refused_before_srun_runs(fake_srun: Path) -> None:
    with pytest.raises(SlurmError, match="gpu09 is not a node of job 42"):
        SlurmStreamOpener(Allocation(job()))("gpu09", "true")
    assert not (fake_srun / "argv.json").exists()


def test_lines_stream_as_printed_and_an_ended_task_is_a_lost_link_saying_what_srun_said(fake_srun: Path) -> None:
    lines: list[str] = []
    states: list[StreamState] = []
    stream = LineStream("gpu02", "echo one; echo two; exit 3", SlurmStreamOpener(Allocation(job())),
                        lambda host, line, at: lines.append(line), states.append, backoff=FAST)
    stream.start()
    try:
        wait_for(lambda: any(s.status == "lost" for s in states))
    finally:
        assert stream.stop()
    assert lines[:2] == ["one", "two"]
    lost = next(s for s in states if s.status == "lost")
    assert lost.error == "srun exited 3: gpu02: task 0: Exited with exit code 3"


def test_closing_the_channel_ends_its_input_so_the_sampler_stops_on_its_own(fake_srun: Path, tmp_path: Path) -> None:
    ended = tmp_path / "ended"
    channel = SlurmStreamOpener(Allocation(job()))(
        "gpu02", f"echo ready; while read -r line; do :; done; echo eof > {ended}; sleep 30")
    srun, task = started_pids(fake_srun)
    assert channel.read(5) == b"ready\n"
    started = time.monotonic()
    channel.close()
    assert time.monotonic() - started < 0.2  # the rest happens in the background
    wait_for(lambda: ended.exists(), 5)
    wait_for(lambda: not alive(srun) and not alive(task), 6)


def test_a_task_that_ignores_its_input_is_killed_through_srun_on_close(fake_srun: Path) -> None:
    channel = SlurmStreamOpener(Allocation(job()))("gpu02", "echo ready; exec sleep 60 </dev/null")
    srun, task = started_pids(fake_srun)
    assert channel.read(5) == b"ready\n"
    channel.close()
    wait_for(lambda: not alive(task), 3)  # srun's own abort (two SIGINTs), well before its SIGKILL
    wait_for(lambda: not alive(srun), 5)


def test_no_srun_here_is_a_slurm_error_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match="srun is not installed here"):
        SlurmStreamOpener(Allocation(job()))("gpu01", "true")


def unpack_agent(where: str) -> None:
    with zipfile.ZipFile(BytesIO(agent_zipapp())) as archive:
        archive.extractall(where)


def test_the_stream_command_runs_the_agent_from_where_ensure_agent_puts_it(tmp_path: Path) -> None:
    environ = {**os.environ, "TMPDIR": str(tmp_path)}
    command = agent_stream_command(0.2, environ=environ)
    missing = ProcessOpener()("node", command)
    try:
        assert read_all(missing) == b""
        assert missing.describe_end() == f"the command exited 3: no clusterkit agent at {node_agent_dir(environ)} " \
                                         f"on {os.uname().nodename}"
    finally:
        missing.close()
    unpack_agent(node_agent_dir(environ))
    channel = ProcessOpener()("node", command)
    try:
        got = b""
        deadline = time.monotonic() + 20
        while got.count(b"\n") < 2 and time.monotonic() < deadline:
            got += channel.read(0.2) or b""
    finally:
        channel.close()
    samples = [line for line in got.decode().splitlines() if line.startswith(SAMPLE_MARKER)]
    assert len(samples) >= 2, got
    assert "cpu" in json.loads(samples[0][len(SAMPLE_MARKER):])
