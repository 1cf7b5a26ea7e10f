"""The model every renderer reads: a report's findings, hosts and facts, and its JSON documents.

Renderers (:mod:`clusterkit.ui.report`: tables, JSON text, JUnit XML) present it; features build it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from clusterkit import __version__
from clusterkit.core.findings import CLUSTER_HOST, Finding, Outcome, counts
from clusterkit.node.facts import Maybe, NodeFacts, Unavailable, to_jsonable

JSON_SCHEMA = "clusterkit.doctor/v1"


class Report(Protocol):
    """What every renderer reads."""

    findings: list[Finding]
    duration_s: float

    @property
    def hosts(self) -> list[str]:
        """The machines judged, in order ([] when the findings are about one document)."""

    def header(self) -> list[str]:
        """Lines that say what was judged, printed before the findings."""

    def missing(self) -> dict[str, str]:
        """Hosts that gave no facts, and why."""

    def names_host(self, finding: Finding) -> bool:
        """Whether the finding is shown with its host (not for the one machine or document judged)."""


def failed(report: Report) -> list[Finding]:
    return [f for f in report.findings if f.outcome is Outcome.FAIL]


def has_errors(report: Report) -> bool:
    return any(f.is_error for f in report.findings)


@dataclass
class DoctorReport:
    """What one doctor run learnt: per-host facts (or why they are missing) and every finding."""

    hosts: list[str]
    facts: Mapping[str, Maybe[NodeFacts]]
    findings: list[Finding]
    hostfile: str | None = None
    started_at: float = field(default_factory=time.time)
    duration_s: float = 0.0

    @property
    def failed(self) -> list[Finding]:
        return failed(self)

    @property
    def has_errors(self) -> bool:
        return has_errors(self)

    def counts(self) -> dict[str, int]:
        return counts(self.findings)

    def header(self) -> list[str]:
        return []

    def missing(self) -> dict[str, str]:
        return {host: facts.reason for host, facts in self.facts.items() if isinstance(facts, Unavailable)}

    def names_host(self, finding: Finding) -> bool:
        return len(self.hosts) > 1 or finding.host not in self.hosts or finding.host == CLUSTER_HOST


def summary_line(report: Report) -> str:
    """``1 error, 2 warnings, 0 info, 40 passed, 3 skipped on 4 hosts in 1.2s``."""
    c = counts(report.findings)

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    line = (f"{plural(c['error'], 'error')}, {plural(c['warning'], 'warning')}, {c['info']} info, "
            f"{c['pass']} passed, {c['skip']} skipped")
    if report.hosts:
        line += f" on {plural(len(report.hosts), 'host')}"
    if report.duration_s:
        line += f" in {report.duration_s:.1f}s"
    return line


def finding_to_json(f: Finding) -> dict[str, Any]:
    return {"check": f.check_id, "severity": f.severity.value, "outcome": f.outcome.value, "host": f.host,
            "where": f.where, "message": f.message, "why": f.why, "fix": f.fix}


def findings_document(report: Report, schema: str, **fields: Any) -> dict[str, Any]:
    """A JSON document of a report: schema, version, ``fields``, the summary and every finding."""
    return {"schema": schema, "clusterkit_version": __version__, **fields,
            "summary": {**counts(report.findings), "ok": not has_errors(report)},
            "findings": [finding_to_json(f) for f in report.findings]}


def report_to_json(report: DoctorReport, include_facts: bool = True) -> dict[str, Any]:
    """The documented JSON document (schema ``clusterkit.doctor/v1``)."""
    doc = findings_document(report, JSON_SCHEMA, started_at=report.started_at,
                            duration_s=round(report.duration_s, 3), hostfile=report.hostfile, hosts=report.hosts)
    if include_facts:
        doc["facts"] = {host: to_jsonable(facts) for host, facts in report.facts.items()}
    return doc
