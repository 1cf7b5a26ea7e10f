"""`clusterkit bench` on this machine: bad input is a one-line usage error; a real local launch works.

The local runs start DeepSpeed's launcher on this machine (gloo, 1-2 CPU ranks): slow, few.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clusterkit.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """This process's environment, with DeepSpeed's shared-memory comm op prebuilt where the test
    session's op cache can be used (tests/cluster/pyenv.py): its ranks load it instead of JIT-building
    it for a minute or more. A copy, as the cluster's nodes get one: torch locks the op's directory."""
    from tests.cluster import pyenv

    cache = pyenv.OPS_CACHE
    if not os.access(cache if cache.exists() else cache.parent, os.W_OK):
        return dict(os.environ)  # another user's cache: the ranks build the op as users' ranks do
    extensions = tmp_path_factory.mktemp("torch_extensions")
    for op in pyenv.prebuilt_ops(pyenv.COMM_OPS):
        for op_dir in op.iterdir():
            shutil.copytree(op_dir, extensions / op_dir.name)
    return {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions)}


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


# issue 19, W9: every flag a workload cannot run with is a usage error naming it, before anything is
# surveyed or launched (the hostfile below does not exist: the flag is refused before it is read).
@pytest.mark.parametrize(("argv", "says"), [
    (["bench", "collectives", "--iters", "0"], "--iters 0: must be at least 1"),
    (["bench", "collectives", "--step-factor", "1"], "--step-factor 1: must be at least 2"),
    (["bench", "collectives", "--min-bytes", "16M", "--max-bytes", "1K"],
     "--min-bytes 16M --max-bytes 1K: the smallest message is larger than the largest"),
    (["bench", "collectives", "--warmup", "-1"], "--warmup -1: must be at least 0"),
    (["bench", "collectives", "--baseline", "--rounds", "0"], "--rounds 0: must be at least 1"),
    (["bench", "collectives", "--min-bytes", "1", "--max-bytes", "2"],
     "--max-bytes 2: less than one float32 element (4 bytes)"),
    (["bench", "collectives", "--sizes", "1M,0"], "0 bytes is less than one float32 element"),
    (["bench", "collectives", "--ops", ","], "--ops ',': name at least one of"),
    (["bench", "collectives", "--sizes", ","], "--sizes ',': name at least one size"),
    (["bench", "collectives", "--max-bytes", "big"], "--max-bytes: not a size: 'big'"),
    (["bench", "collectives", "--deadline", "0"], "--deadline 0: must be more than 0"),
    (["bench", "collectives", "--master-port", "70000"], "--master-port 70000: must be at most 65535"),
    (["bench", "collectives", "--slots", "0"], "--slots 0: must be at least 1"),
    (["bench", "find-slow", "/nonexistent/hostfile", "--pair-iters", "0"], "--pair-iters 0: must be at least 1"),
    (["bench", "find-slow", "/nonexistent/hostfile", "--slow-ratio", "1.5"], "--slow-ratio 1.5: must be at most 1"),
    (["bench", "find-slow", "/nonexistent/hostfile", "--pair-deadline", "-5"], "--pair-deadline -5: must be more"),
    (["bench", "find-slow", "/nonexistent/hostfile", "--size", "2"], "--size 2: smaller than one float32 element"),
    (["bench", "find-slow", "--write-hostfile", "/tmp/x"], "--write-hostfile needs a HOSTFILE"),
    (["bench", "collectives", "--find-slow", "--pair-iters", "0"], "--pair-iters 0: must be at least 1"),
    (["bench", "traffic", "--params", "7B", "--max-bytes", "0"], "--max-bytes 0: must be at least 1 byte"),
    (["bench", "traffic", "--params", "7B", "--iters", "0"], "--iters 0: must be at least 1"),
    (["bench", "gpu", "/nonexistent/hostfile", "--iters", "0"], "--iters 0: must be at least 1"),
    (["bench", "gpu", "--mem-mib", "-1"], "--mem-mib -1: must be at least 0"),
    (["bench", "zero", "/nonexistent/hostfile", "--steps", "0"], "--steps 0: must be at least 1"),
    (["bench", "zero", "--build-deadline", "0"], "--build-deadline 0: must be more than 0"),
])
def test_a_flag_no_workload_can_run_with_is_refused_before_anything_runs(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("clusterkit: error: ")
    assert says in err


def test_every_numeric_bench_flag_has_a_range() -> None:
    from clusterkit.cli import build_parser
    from clusterkit.commands.bench_inputs import NUMERIC, SIZES

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    workloads = next(a for a in commands["bench"]._actions if isinstance(a, argparse._SubParsersAction)).choices
    unchecked = {f"{name} {action.option_strings[0]}" for name, sub in workloads.items() for action in sub._actions
                 if action.type in (int, float) and action.dest not in NUMERIC}
    assert unchecked == set()
    sized = {f"{name} {action.option_strings[0]}" for name, sub in workloads.items() for action in sub._actions
             if action.metavar == "SIZE" and action.dest not in SIZES}
    assert sized == set()


def test_every_workload_has_a_command() -> None:
    done = subprocess.run([sys.executable, "-m", "clusterkit", "bench", "--help"], capture_output=True, text=True,
                          check=True)
    for name in ("collectives", "find-slow", "traffic", "gpu", "zero"):
        assert name in done.stdout


@pytest.mark.slow
def test_a_local_sweep_on_two_ranks_is_checked_and_drawn(tmp_path: Path, local_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "clusterkit", "bench", "collectives", "--slots", "2",
                           "--ops", "all_reduce,reduce_scatter", "--max-bytes", "16K", "--iters", "2",
                           "--save", str(tmp_path / "sweep.json"), "--log", str(tmp_path / "log.json"), "--json"],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=local_env, check=False)
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
def test_doctor_runs_the_workloads_after_its_checks(local_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "clusterkit", "doctor", "--workloads", "collectives", "--json",
                           "--no-facts"], capture_output=True, text=True, timeout=600, cwd=REPO, env=local_env,
                          check=False)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    checks = {f["check"] for f in json.loads(done.stdout)["findings"]}
    assert "collectives-measured" in checks or "collectives-below-expectation" in checks
    assert "shm-size" in checks or len(checks) > 10  # the doctor's own checks are there too
