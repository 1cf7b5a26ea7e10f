"""A newcomer clones anywhere: the cluster tests work from a clone whose repo (and venv, when it lives
in the clone) sits under a directory the nodes have privately (/tmp, /root, /home).

The harness bind-mounts the repo, the venv and its interpreter into every node at their own path;
this runs a few harness tests from a fresh copy of the repo under such a path, in a pytest of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.cluster.clusterkit_run import REPO
from tests.cluster.pyenv import NO_OPS_BUILD_ENV

INNER_TESTS = ("test_the_repo_and_usr_are_shared_like_an_image or "
               "test_the_training_env_imports_torch_and_deepspeed_and_has_the_launcher")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("parent", ["/tmp", "/root"])
def test_the_cluster_tests_pass_from_a_clone_under_a_private_directory(parent: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the namespace cluster needs root")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    base = Path(tempfile.mkdtemp(prefix="ckt-clone-", dir=parent))
    clone = base / "clusterkit"
    try:
        for name in filter(None, files.decode().split("\0")):
            source = REPO / name
            if source.is_file():
                target = clone / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target, follow_symlinks=False)
        (clone / "clusterkit" / "playbooks").unlink(missing_ok=True)
        (clone / "clusterkit" / "playbooks").symlink_to("../playbooks")
        ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/cluster/test_harness.py", "-k", INNER_TESTS],
                             cwd=clone, capture_output=True, text=True, timeout=840,
                             env={**os.environ, NO_OPS_BUILD_ENV: "1"})
        assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
        assert "2 passed" in ran.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)
