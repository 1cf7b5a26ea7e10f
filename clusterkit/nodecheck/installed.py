"""Whether clusterkit is Slurm's health check on the nodes of a job, and at which version (for ``doctor``).

Slurm's hooks come from ``scontrol show config`` on the head; each node is asked, in one srun step, for
the version its HealthCheckProgram reports, only where that program is one of clusterkit's scripts
(another site's health check is never run by clusterkit).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from clusterkit.cluster.remote.slurm import SlurmError, slurm_command
from clusterkit.node.facts import Maybe, SlurmHealthCheckFacts, Unavailable
from clusterkit.nodecheck.install import SCRIPT_MARK

if TYPE_CHECKING:
    from clusterkit.cluster import Nodes

_CONFIG_LINE = re.compile(r"^(\w+)\s*=\s*(.*?)\s*$")
NOT_OURS = "not a clusterkit nodecheck script"
MISSING = "missing"


def parse_hook_config(text: str) -> SlurmHealthCheckFacts:
    """``scontrol show config`` -> the health check program and interval, the prolog and the epilog."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _CONFIG_LINE.match(line)
        if match:
            values.setdefault(match.group(1), match.group(2))

    def program(key: str) -> str:
        value = values.get(key, "")
        return "" if value in ("(null)", "NONE", "") else value

    interval = re.match(r"(\d+)", values.get("HealthCheckInterval", ""))
    return SlurmHealthCheckFacts(program=program("HealthCheckProgram"),
                                 interval_s=int(interval.group(1)) if interval else None,
                                 prolog=program("Prolog"), epilog=program("Epilog"))


def version_command(program: str) -> str:
    """What each node runs: the program's version if it is one of clusterkit's scripts, else why not."""
    q = shlex.quote(program)
    return (f"if [ ! -e {q} ]; then echo {shlex.quote(MISSING)}; "
            f"elif grep -q {shlex.quote(SCRIPT_MARK)} {q} 2>/dev/null; then {q} --version 2>&1 | tail -n 1; "
            f"else echo {shlex.quote(NOT_OURS)}; fi")


def read_health_check(nodes: Nodes, names: Sequence[str], timeout_s: float = 30.0
                      ) -> Maybe[SlurmHealthCheckFacts]:
    """The hooks Slurm runs and, when it runs a health check, what each of ``nodes`` says it is."""
    try:
        facts = parse_hook_config(slurm_command(["scontrol", "show", "config"], min(timeout_s, 15.0)))
    except SlurmError as exc:
        return Unavailable(str(exc))
    if not facts.program or not names:
        return facts
    results = nodes.run(version_command(facts.program), timeout_s, hosts=names)
    for node, result in results.items():
        facts.versions[node] = _version(result.value.stdout.splitlines() if result.ok and result.value else None,
                                        result.error or "no answer")
    return facts


def _version(lines: list[str] | None, error: str) -> Maybe[str]:
    if lines is None:
        return Unavailable(error)
    said = next((line.strip() for line in reversed(lines) if line.strip()), "")
    match = re.fullmatch(r"clusterkit (\S+)", said)
    return match.group(1) if match else Unavailable(said or "the script printed no version")
