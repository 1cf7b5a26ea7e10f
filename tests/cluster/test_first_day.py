"""The README's first-day walkthrough, as a new user runs it: from a login node outside the hostfile,
as a non-root user whose home every node shares (NFS-like), typing the password at the prompt.

The commands are read from the README itself (its "A typical first day" block), with the README's
example paths replaced by this cluster's: the test fails when the README stops working.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.clusterkit_run import REPO, home_files
from tests.cluster.harness import Cluster

PROMPT = "SSH password for the nodes"
CONFIG = "tests/fixtures/launch/zero3_cpu_3ranks.json"
SCRIPT = "clusterkit/workloads/scripts/zero_smoke.py"


def readme_first_day() -> list[str]:
    """The commands of the README's first-day block, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("A typical first day on new machines:", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.strip().splitlines() if line.strip()]


def as_here(command: str, python: str) -> str:
    """A README command with this cluster's paths, run with this checkout's clusterkit."""
    assert command.startswith("clusterkit "), command
    command = command.replace("/opt/env/bin/python", python).replace("ds_config.json", CONFIG)
    command = re.sub(r"(?<= -- )train\.py", f"{SCRIPT} --steps 1", command)
    return f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m {command}"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_readme_first_day_ends_in_a_zero_step_after_one_bootstrap_run(
        start_cluster: Callable[..., Cluster]) -> None:
    cluster = start_cluster(4, shared_home=True)
    python = cluster.install_python_env(prebuilt_ops=True)
    login, *workers = cluster.nodes
    login.put_file("/home/ckuser/hostfile", cluster.hostfile_text(nodes=workers))
    commands = readme_first_day()
    assert [c.split()[1] for c in commands] == ["bootstrap", "bootstrap", "doctor", "config", "launch"]
    bootstraps = 0
    for command in commands:
        line = as_here(command, python).replace(" hostfile", " ~/hostfile")
        result = login.run_in_terminal(line, {PROMPT: cluster.password}, timeout=600)
        print(f"$ {command}\n{result.stdout[-1500:]}")
        assert result.rc == 0, f"{command}\n{result.stdout[-4000:]}"
        if " bootstrap " in line and "--dry-run" not in line:
            bootstraps += 1
            assert "one home shared by node2, node3, node4" in " ".join(result.stdout.split())
        if "--dry-run" in line:
            assert "dry run: nothing was changed" in result.stdout
            assert not Path(workers[0].home / ".ssh" / "authorized_keys").exists()
        if " launch " in line:
            assert "world size 3" in result.stdout
            assert "ZERO SMOKE OK" in result.stdout
    assert bootstraps == 1
    shared = home_files(workers[0])
    keys = shared[".ssh/authorized_keys"].splitlines()
    assert len(keys) == len(set(keys)) == 1  # one key: the login node's, which is every node's too
    known = shared[".ssh/known_hosts"]
    for node in workers:
        assert re.search(rf"^(\S+,)?{node.name}(,\S+)? ssh-ed25519 ", known, re.MULTILINE), known
    backups = [name for name in shared["listing"].split() if name.endswith(".bak")]
    assert len(backups) == len(set(backups))
