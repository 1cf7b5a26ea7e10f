"""Helpers for the workload tests on the namespace cluster: the training env with DeepSpeed's optimizer
ops prebuilt, and ``clusterkit bench`` run from the head node.

The ZeRO suite needs DeepSpeed's FusedAdam and CPUAdam ops (and the CPU comm op), which DeepSpeed
JIT-compiles: minutes per op on two shared cores. Like the comm op of
``install_python_env(prebuilt_ops=True)``, they are built once per machine (tests/cluster/pyenv.py)
and copied into every node's env, so the suite's up-front build finds them built (it still loads each
one through ninja on every node).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from tests.cluster.clusterkit_run import clusterkit
from tests.cluster.harness import Cluster
from tests.cluster.node import CommandResult, Node


def install_env_with_optimizer_ops(cluster: Cluster) -> str:
    """The training env with the comm op and the optimizer ops built on every node; its python."""
    return cluster.install_python_env(optimizer_ops=True)


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
