"""Run the clusterkit CLI inside a namespace node, as a user on that node would."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from tests.cluster.harness import Cluster
from tests.cluster.node import CommandResult, Node

REPO = Path(__file__).resolve().parents[2]


def clusterkit(node: Node, args: str, *, timeout: float = 240, env: dict[str, str] | None = None) -> CommandResult:
    """``clusterkit ARGS`` on ``node`` as the test user, from the repo (shared by every node)."""
    return node.run(f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m clusterkit {args}",
                    timeout=timeout, env=env)


def bootstrap(cluster: Cluster, python: str, extra: str = "", *, password: bool = True,
              timeout: float = 300, head: Node | None = None, hostfile: str | None = None) -> CommandResult:
    """``clusterkit bootstrap ~/hostfile`` from ``head`` (default node1; the password via --password-env).

    ``hostfile``: its text (default: every node by name).
    """
    head = head or cluster.nodes[0]
    head.put_file("/home/ckuser/hostfile", hostfile if hostfile is not None else cluster.hostfile_text())
    flags = f"--python {python} --connect-timeout 3 {extra}"
    if password:
        flags += " --password-env CK_PASSWORD --trust-new-hosts"
    return clusterkit(head, f"bootstrap ~/hostfile {flags}", timeout=timeout,
                      env={"CK_PASSWORD": cluster.password} if password else None)


def bootstrapped_from_bare_homes(cluster: Cluster, python: str) -> Cluster:
    """The cluster healed, every home emptied, then bootstrapped from node1 (which must succeed)."""
    cluster.heal()
    cluster.reset_homes()
    result = bootstrap(cluster, python)
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cluster


def doctor_json(cluster: Cluster, python: str, extra: str = "", timeout: float = 180,
                head: Node | None = None) -> dict[str, Any]:
    """``clusterkit doctor ~/hostfile --json`` from ``head`` (default node1); the parsed report."""
    result = clusterkit(head or cluster.nodes[0], f"doctor ~/hostfile --json --python {python} {extra}",
                        timeout=timeout)
    assert result.rc in (0, 1), result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def failures(report: dict[str, Any], check: str) -> list[dict[str, Any]]:
    """The failed findings of one check."""
    return [f for f in report["findings"] if f["check"] == check and f["outcome"] == "fail"]


def home_files(node: Node) -> dict[str, str]:
    """The files bootstrap manages in a node's home, with their content, plus any backups."""
    listing = node.run("cd ~ && ls -1 .ssh .deepspeed_env* 2>/dev/null", check=False).stdout.split()
    files = {}
    for name in (".ssh/authorized_keys", ".ssh/known_hosts", ".ssh/id_ed25519.pub", ".deepspeed_env"):
        result = node.run(f"cat ~/{name}", check=False)
        files[name] = result.stdout if result.rc == 0 else "<missing>"
    files["listing"] = " ".join(sorted(listing))
    return files
