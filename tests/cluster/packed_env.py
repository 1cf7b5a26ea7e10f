"""A real conda env for `clusterkit env push` tests: made offline by rattler on the head, packed there.

The env is made from the synthetic local channel (tests/synthetic_conda.py) into the head's private
PREFIX, placeholders written for that path. torch and deepspeed are not conda packages here: like the
nodes' training env (tests/cluster/pyenv.py), the env gets a ``.pth`` line naming the shared venv's
site-packages, so ``import torch, deepspeed`` works in it and is checked on every node; the ``.pth``
travels in the archive as an ordinary unmanaged file.
"""

from __future__ import annotations

import json

from tests import synthetic_conda
from tests.cluster import pyenv
from tests.cluster.clusterkit_run import clusterkit
from tests.cluster.harness import Cluster
from tests.cluster.node import Node

PREFIX = "/opt/envs/ckconda"
PACKS = "/home/ckuser/packs"
STAGED_DIR = "/opt/envs/.clusterkit-envpack"


def make_env_parents(cluster: Cluster) -> None:
    """/opt/envs on every node, the test user's to write (as an admin would set it up)."""
    for node in cluster.nodes:
        node.run(f"mkdir -p /opt/envs && chown {cluster.user}: /opt/envs", user="root", check=True)


def install_and_pack(cluster: Cluster, head: Node, prefix: str = PREFIX) -> tuple[str, dict[str, object]]:
    """The conda env installed on ``head`` at ``prefix`` (at most synthetic_conda.MAX_TEST_PREFIX long) and
    packed there with `clusterkit env pack`; (archive path, manifest)."""
    channel = synthetic_conda.build_channel()
    synthetic_conda.install_env(channel, head.host_path(prefix), as_prefix=prefix)
    venv = pyenv.shared_venv()
    version = pyenv.python_version(venv)
    (pyenv.site_packages(head.host_path(prefix), version) / pyenv.PTH_NAME).write_text(
        f"{pyenv.site_packages(venv, version)}\n")
    head.run(f"chown -R {cluster.user}: {prefix}", user="root", check=True)  # the user's own env
    packed = clusterkit(head, f"env pack {prefix} -o {PACKS} --json", timeout=300)
    assert packed.rc == 0, packed.stderr[-3000:]
    manifest: dict[str, object] = json.loads(packed.stdout)
    return f"{PACKS}/{manifest['archive']}", manifest
