"""The flight recorder on a real gloo job on this machine: torch 2.13 records gloo collectives, the rank
hook dumps them on request while the ranks hang, and the reader names the collective and the rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusterkit.cluster.local import LocalNodes
from clusterkit.core.flightrec import DESYNC_ID, flightrec_env
from clusterkit.stacks.flightrec import install_hook, read_flight_records
from tests.unit.test_cluster_nodes import here

pytest.importorskip("torch")
JOB = Path(__file__).resolve().parents[1] / "fixtures" / "flightrec" / "desync_job.py"
pytestmark = pytest.mark.slow


def start_job(directory: Path, nprocs: int, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{directory}:{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}",
                             "--standalone", str(JOB), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(job: subprocess.Popen[str], word: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    assert job.stdout is not None
    while time.monotonic() < deadline:
        line = job.stdout.readline()
        if word in line:
            return
        if not line and job.poll() is not None:
            break
    raise AssertionError(f"the job never printed {word!r}")


def test_a_rank_that_skips_an_all_reduce_is_named_with_the_collective_it_never_reached(tmp_path: Path) -> None:
    nodes: LocalNodes = here()
    directory = tmp_path / "flightrec"
    assert all(r.ok and r.value and r.value.ok for r in install_hook(nodes, str(directory), 10).values())
    job = start_job(directory, 3, "--steps", "5", "--skip-rank", "1", "--skip-step", "2", "--hold", "60")
    try:
        wait_for(job, "holding", 60)
        report = read_flight_records(nodes, str(directory), timeout_s=20)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert sorted(t.rank for t in report.traces) == [0, 1, 2]
    assert not report.stale and not report.unreachable
    found = report.disagreement
    assert found is not None
    assert (found.seq, found.expected.op, found.expected.input_sizes) == (5, "gloo:all_reduce", ((1000,),))
    assert found.missing == [1] and found.variants[0][1] == [0, 2]
    assert found.last_of_missing[1] is not None and found.last_of_missing[1].seq == 4
    finding = report.findings()[0]
    assert finding.check_id == DESYNC_ID
    assert "never by rank(s) 1" in finding.message and "#5" in finding.message


def test_the_hook_sets_the_recorder_environment_in_a_rank_and_runs_the_sitecustomize_it_hides(
        tmp_path: Path) -> None:
    hook, other = tmp_path / "hook", tmp_path / "other"
    install_hook(here(), str(hook), 10)
    other.mkdir()
    shows = "import json, os\nprint(json.dumps({k: v for k, v in os.environ.items() if 'TORCH' in k}))\n"
    (other / "sitecustomize.py").write_text(shows)
    env = {k: v for k, v in os.environ.items() if "TORCH" not in k}
    out = subprocess.run([sys.executable, "-c", "pass"], env={**env, "PYTHONPATH": f"{hook}:{other}", "RANK": "0"},
                         capture_output=True, text=True, timeout=30)
    assert json.loads(out.stdout) == flightrec_env(str(hook))
    not_a_rank = subprocess.run([sys.executable, "-c", "pass"], env={**env, "PYTHONPATH": f"{hook}:{other}"},
                                capture_output=True, text=True, timeout=30)
    assert json.loads(not_a_rank.stdout) == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_the_hook_is_not_written_into_a_job_directory_another_user_made_first(tmp_path: Path) -> None:
    planted = tmp_path / "runs" / "job1"
    (planted / "flightrec").mkdir(parents=True)
    os.chown(planted, 65534, 65534)
    result = install_hook(here(), str(planted / "flightrec"), 10)
    output = next(iter(result.values())).value
    assert output is not None and output.exit_code != 0 and "belongs to another user" in output.stderr
    assert not (planted / "flightrec" / "sitecustomize.py").exists()


def rank_pids(job: subprocess.Popen[str]) -> dict[int, int]:
    """The job's ranks (torch.distributed.run's children) by their RANK."""
    children = Path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split()
    ranks = {}
    for pid in children:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next(v.split(b"=", 1)[1] for v in env if v.startswith(b"RANK="))
        ranks[int(rank)] = int(pid)
    return ranks


def test_a_stopped_rank_does_not_answer_the_dump_request_and_is_named(tmp_path: Path) -> None:
    nodes = here()
    directory = tmp_path / "flightrec"
    install_hook(nodes, str(directory), 10)
    job = start_job(directory, 2, "--steps", "3", "--skip-rank", "1", "--skip-step", "1", "--hold", "60")
    try:
        wait_for(job, "holding", 60)
        read_flight_records(nodes, str(directory), timeout_s=20, wait_s=1.5)  # both dumps there once
        stopped = rank_pids(job)[0]
        os.kill(stopped, signal.SIGSTOP)
        time.sleep(1.1)  # the next request is in a later second than the dumps
        report = read_flight_records(nodes, str(directory), timeout_s=20)
        os.kill(stopped, signal.SIGCONT)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert list(report.stale) == [0]
    assert any(f.check_id == "rank-unresponsive" and f.where == "rank 0" for f in report.findings())
