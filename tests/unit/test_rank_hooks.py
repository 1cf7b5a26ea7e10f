"""The two hooks `clusterkit launch` puts first on the ranks' PYTHONPATH (the stack hook, then the flight
recorder's), each a ``sitecustomize`` that runs the one it hides: together, each runs once, and the user's
own ``sitecustomize`` after them runs once too (they used to run each other in a circle until Python's
recursion limit: ninety flight-recorder threads per rank and the user's file never run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

NODE = Path(__file__).resolve().parents[2] / "clusterkit" / "node"
PROBE = ("import sys, threading, signal; "
         "print(sys.__dict__.get('users_runs'), [t.name for t in threading.enumerate()].count('clusterkit-flightrec'))")


def test_both_hooks_and_the_users_sitecustomize_each_run_once_in_a_rank(tmp_path: Path) -> None:
    stacks, recorder, users = (tmp_path / name for name in ("cache/stacks-hook", "flightrec", "users"))
    for directory in (stacks, recorder, users):
        directory.mkdir(parents=True)
    shutil.copy(NODE / "stacks_hook.py", stacks / "sitecustomize.py")
    shutil.copy(NODE / "flightrec_hook.py", recorder / "sitecustomize.py")
    (users / "sitecustomize.py").write_text(
        "import sys\nsys.__dict__['users_runs'] = sys.__dict__.get('users_runs', 0) + 1\n")
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "PYTHONPATH": f"{stacks}:{recorder}:{users}"}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"], done.stdout + done.stderr
    assert "recursion" not in done.stderr
    assert len(list((tmp_path / "cache/stacks").iterdir())) == 1  # the stack hook's per-rank file, made once


def test_a_flight_recorder_dump_that_cannot_be_written_costs_that_dump_not_the_rank(tmp_path: Path) -> None:
    # The job directory removed under a running job (a cleanup, a full /tmp): the dump fails quietly.
    probe = ("import importlib.util, sys, types; "
             f"spec = importlib.util.spec_from_file_location('hook', {str(NODE / 'flightrec_hook.py')!r}); "
             "hook = importlib.util.module_from_spec(spec); spec.loader.exec_module(hook); "
             "hook._recording = lambda: True; print(hook.dump('0'))")
    env = {**os.environ, "TORCH_FR_DUMP_TEMP_FILE": str(tmp_path / "gone" / "rank_")}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr


def test_a_failing_sitecustomize_under_either_hook_is_reported_once_and_the_rank_still_starts(tmp_path: Path) -> None:
    stacks, users = tmp_path / "cache/stacks-hook", tmp_path / "users"
    for directory in (stacks, users):
        directory.mkdir(parents=True)
    shutil.copy(NODE / "stacks_hook.py", stacks / "sitecustomize.py")
    (users / "sitecustomize.py").write_text("raise RuntimeError('broken site')\n")
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "PYTHONPATH": f"{stacks}:{users}"}
    done = subprocess.run([sys.executable, "-c", "print('started')"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "started")
    assert done.stderr.count("the other sitecustomize failed: broken site") == 1, done.stderr
