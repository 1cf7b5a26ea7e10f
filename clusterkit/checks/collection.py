"""Checks about the collection itself: a section that could not be read is a finding, not a gap."""

from __future__ import annotations

from collections.abc import Iterator

from clusterkit.checks.registry import NodeContext, node_check
from clusterkit.core.findings import Problem, Severity
from clusterkit.node.facts import NodeFacts, Unavailable

_SECTIONS = ("system", "nvidia", "network", "cuda", "python_env", "launcher")


@node_check("facts-unavailable", Severity.WARNING, tags=("collection",),
            why="checks that need an unreadable section are skipped, so the node is not vouched for",
            fix="rerun with CLUSTERKIT_DEBUG=1; the reason names the failing reader")
def facts_unavailable(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """Every section of the node's facts could be read."""
    for name in _SECTIONS:
        value = getattr(facts, name)
        if isinstance(value, Unavailable):
            yield Problem(f"{name} facts unavailable: {value.reason}", where=name)
