"""`clusterkit bench` on this machine: bad input is a one-line usage error; a real local launch works.

The local runs start DeepSpeed's launcher on this machine (gloo, 1-2 CPU ranks): slow, few.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("argv", "says"), [
    (["bench", "collectives", "--ops", "all_reduce,allreduce"], "--ops: unknown collective(s) allreduce"),
    (["bench", "collectives", "--sizes", "lots"], "not a size: 'lots'"),
    (["bench", "zero", "--stages", "4"], "--stages: unknown 4"),
    (["bench", "find-slow"], "needs a hostfile with at least two hosts"),
    (["bench", "collectives", "--include", "node1"], "--include/--exclude need a HOSTFILE"),
    (["bench", "gpu", "/nonexistent/hostfile"], "/nonexistent/hostfile: hostfile not found"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


def test_every_workload_has_a_command() -> None:
    done = subprocess.run([sys.executable, "-m", "clusterkit", "bench", "--help"], capture_output=True, text=True,
                          check=True)
    for name in ("collectives", "find-slow", "traffic", "gpu", "zero"):
        assert name in done.stdout


@pytest.mark.slow
def test_a_local_sweep_on_two_ranks_is_checked_and_drawn(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "clusterkit", "bench", "collectives", "--slots", "2",
                           "--ops", "all_reduce,reduce_scatter", "--max-bytes", "16K", "--iters", "2",
                           "--save", str(tmp_path / "sweep.json"), "--log", str(tmp_path / "log.json"), "--json"],
                          capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["result"]["world_size"] == 2
    assert [r["size"] for r in doc["result"]["ops"]["all_reduce"]["rows"]] == [1024, 4096, 16384]
    assert all(body["wrong"] == 0 for body in doc["result"]["ops"].values())
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["schema"] == "clusterkit.workload-log/v1"
    ranks = {line[2].split("]")[0] for line in log["runs"][0]["lines"] if line[2].startswith("[ck:rank=")}
    assert ranks == {"[ck:rank=0", "[ck:rank=1"}


@pytest.mark.slow
def test_doctor_runs_the_workloads_after_its_checks() -> None:
    done = subprocess.run([sys.executable, "-m", "clusterkit", "doctor", "--workloads", "collectives", "--json",
                           "--no-facts"], capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    checks = {f["check"] for f in json.loads(done.stdout)["findings"]}
    assert "collectives-measured" in checks or "collectives-below-expectation" in checks
    assert "shm-size" in checks or len(checks) > 10  # the doctor's own checks are there too
