"""Helpers for the workload tests on the namespace cluster: DeepSpeed's optimizer ops prebuilt per
machine, and ``clusterkit bench`` run from the head node.

The ZeRO suite needs DeepSpeed's FusedAdam and CPUAdam ops (and the CPU comm op), which DeepSpeed
JIT-compiles: minutes per op on two shared cores. Like the comm op of
``install_python_env(prebuilt_ops=True)``, they are built once per machine inside a node (same in-node
path), kept under ``/var/cache/clusterkit-tests/torch-extensions-workloads`` and copied into every
node's env, so the suite's up-front build finds them built (it still loads each one through ninja on
every node).

They are built with the env's own ninja first on PATH, as the ranks run it (``.deepspeed_env`` puts the
env's bin/ first): ninja 1.12+ reads an older ninja's ``.ninja_log`` as "build log version is too old;
starting over" and recompiles everything, so ops built with the system's ninja 1.11 would be
rebuilt on every node at the first launch. That is also why the comm op is rebuilt here.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from tests.cluster import pyenv
from tests.cluster.clusterkit_run import clusterkit
from tests.cluster.harness import Cluster
from tests.cluster.node import CommandResult, Node

OPTIMIZER_OPS = ("ShareMemCommBuilder", "FusedAdamBuilder", "CPUAdamBuilder")
CACHE = Path("/var/cache/clusterkit-tests/torch-extensions-workloads")


def install_env_with_optimizer_ops(cluster: Cluster) -> str:
    """The training env with the comm op and the optimizer ops built on every node; its python."""
    python = cluster.install_python_env(prebuilt_ops=True)
    env = pyenv.DEFAULT_ENV
    extensions = f"{env}/torch_extensions"
    cache = CACHE / pyenv.prebuilt_ops_key(env)
    first = cluster.nodes[0]
    if not cache.exists():
        builders = "; ".join(f"B.{name}().load()" for name in OPTIMIZER_OPS)
        first.run(f"PATH={env}/bin:$PATH {python} -c 'import deepspeed.ops.op_builder.cpu as B; {builders}'",
                  timeout=3600, check=True)
        building = cache.with_name(cache.name + ".partial")
        shutil.rmtree(building, ignore_errors=True)
        building.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(first.host_path(extensions), building)
        building.rename(cache)
    for node in cluster.nodes:
        target = node.host_path(extensions)
        for op_dir in cache.iterdir():
            shutil.rmtree(target / op_dir.name, ignore_errors=True)
            shutil.copytree(op_dir, target / op_dir.name)
        node.run(f"chown -R {cluster.user}: {extensions}", user="root", check=True)
    return python


def bench(node: Node, python: str, args: str, timeout: float = 600) -> CommandResult:
    """``clusterkit bench ARGS --python PYTHON`` on ``node`` as the test user."""
    return clusterkit(node, f"bench {args} --python {shlex.quote(python)} --connect-timeout 3", timeout=timeout)


def bench_json(node: Node, python: str, args: str, timeout: float = 600) -> tuple[CommandResult, dict[str, Any]]:
    """``bench ARGS --json``; the result and the parsed document."""
    result = bench(node, python, f"{args} --json", timeout)
    try:
        doc: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"no JSON (rc {result.rc}): {result.stdout[-2000:]}\n{result.stderr[-4000:]}") from exc
    return result, doc


def finding_ids(doc: dict[str, Any], outcome: str = "fail") -> list[str]:
    return [f["check"] for f in doc["findings"] if f["outcome"] == outcome]
