"""Renderers: present findings as blocks, JSON or JUnit XML. They never judge.

Every report (the doctor's, config check's, a workload's diagnosis) is a :class:`Report`: findings,
the hosts they are about, and the lines that say what was judged. The doctor's JSON layout is a
stable, documented schema (``docs/doctor-json.md``): add fields, never rename.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from rich.console import Console
from rich.text import Text

from clusterkit.core.findings import CLUSTER_HOST, Finding, Outcome, Severity, counts
from clusterkit.core.findings_report import (
    JSON_SCHEMA,
    DoctorReport,
    Report,
    failed,
    finding_to_json,
    findings_document,
    has_errors,
    report_to_json,
    summary_line,
)

__all__ = ["JSON_SCHEMA", "DoctorReport", "Report", "failed", "finding_to_json", "findings_document",
           "group_findings", "has_errors", "render_json", "render_junit", "render_table", "report_to_json",
           "summary_line"]
from clusterkit.core.hostlist import compress

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_TITLE = {Severity.ERROR: "Errors", Severity.WARNING: "Warnings", Severity.INFO: "Info"}
_MARK = {Severity.ERROR: "✗", Severity.WARNING: "!", Severity.INFO: "i"}


def _host_pattern(host: str) -> re.Pattern[str]:
    """``host`` as a whole word (``node1`` not inside ``node10``, ``10.0.0.1`` not inside ``10.0.0.12``)."""
    return re.compile(r"(?<![\w.-])" + re.escape(host) + r"(?![\w-]|\.\w)")


@dataclass(frozen=True)
class FindingGroup:
    """Findings of one check that say the same thing on several hosts (the host name aside)."""

    first: Finding
    hosts: list[str]

    @property
    def hostlist(self) -> str:
        return compress(self.hosts)

    def text(self, value: str) -> str:
        """``value`` of the first finding, its host name replaced by the whole group's host list."""
        if len(self.hosts) == 1 or self.first.host == CLUSTER_HOST:
            return value
        return _host_pattern(self.first.host).sub(self.hostlist, value)


def group_findings(findings: list[Finding]) -> list[FindingGroup]:
    """Identical findings on many hosts as one group each (in the order first seen)."""
    groups: dict[tuple[str, ...], FindingGroup] = {}
    for f in findings:
        pattern = _host_pattern(f.host)
        key = (f.check_id, f.severity.value, *(pattern.sub("\0", text) for text in (f.message, f.where, f.fix)))
        if f.host == CLUSTER_HOST:
            key = (*key, str(id(f)))  # cluster-wide findings already speak for every host
        if key in groups:
            groups[key].hosts.append(f.host)
        else:
            groups[key] = FindingGroup(f, [f.host])
    return list(groups.values())


def render_table(report: Report, console: Console, show_passed: bool = False, brief: bool = False) -> None:
    """Failures grouped by severity (errors first): what, where, and the fix, never truncated.

    Each finding is a short block rather than a table row, so a fix command stays whole and
    copy-pastable at any terminal width. A finding that is the same on several hosts is one block
    naming them as a host list (``node[01-64]``); ``--json`` keeps one finding per host. ``brief``
    keeps the blocks for errors only and gives each other failing check one line naming its hosts
    (a launch's preflight).
    """
    for index, heading in enumerate(report.header()):
        console.print(Text(heading, style="bold" if index == 0 else ""), soft_wrap=True)
    if report.header():
        console.print()
    for host, why in report.missing().items():
        console.print(Text.assemble((f"{host}", "bold red"), f": no facts ({why})"))
    for severity in Severity:
        rows = sorted((f for f in failed(report) if f.severity is severity),
                      key=lambda f: (f.host != CLUSTER_HOST, f.check_id, f.where, f.host))
        if not rows:
            continue
        console.print(Text(f"{_TITLE[severity]} ({len(rows)})", style=_STYLE[severity] + " underline"))
        if brief and severity is not Severity.ERROR:
            _print_brief(rows, severity, console)
            continue
        for group in group_findings(rows):
            f = group.first
            head = Text(f" {_MARK[severity]} ", style=_STYLE[severity])
            if report.names_host(f):
                head.append(f"[{group.hostlist}] ", style="bold")
            head.append(f.check_id, style=_STYLE[severity])
            if f.where:
                head.append(f"  {group.text(f.where)}", style="dim")
            console.print(head, soft_wrap=True)
            console.print(Text(f"   {group.text(f.message)}"), soft_wrap=True)
            console.print(Text(f"   fix: {group.text(f.fix)}", style="green"), soft_wrap=True)
        console.print()
    if show_passed:
        console.print(Text("Passed and skipped", style="underline"))
        for f in sorted((f for f in report.findings if f.outcome is not Outcome.FAIL),
                        key=lambda f: (f.host, f.outcome.value, f.check_id)):
            mark, style = ("✓", "green") if f.outcome is Outcome.PASS else ("-", "dim")
            line = Text(f" {mark} ", style=style)
            if report.names_host(f):
                line.append(f"[{f.host}] ", style="bold")
            line.append(f"{f.check_id}: {f.message}", style="" if f.outcome is Outcome.PASS else "dim")
            console.print(line, soft_wrap=True)
        console.print()
    style = "bold red" if has_errors(report) else ("yellow" if counts(report.findings)["warning"] else "bold green")
    console.print(Text(summary_line(report), style=style))


def _print_brief(rows: list[Finding], severity: Severity, console: Console) -> None:
    """One line per check: its first message and every host it failed on."""
    by_check: dict[str, list[Finding]] = {}
    for f in rows:
        by_check.setdefault(f.check_id, []).append(f)
    for check_id, found in by_check.items():
        line = Text(f" {_MARK[severity]} ", style=_STYLE[severity])
        line.append(check_id, style=_STYLE[severity])
        line.append(f" [{compress(f.host for f in found)}] ", style="bold")
        line.append(found[0].message)
        console.print(line, soft_wrap=True)
    console.print()


def render_json(report: DoctorReport, include_facts: bool = True) -> str:
    return json.dumps(report_to_json(report, include_facts), indent=2, sort_keys=False)


def render_junit(report: Report, name: str = "clusterkit doctor") -> str:
    """JUnit XML: one testsuite per host, one testcase per finding.

    Error-severity failures are ``<failure>``; warning and info failures pass with the message in
    ``<system-out>`` (matching the exit code: only errors fail a run); skips are ``<skipped>``.
    """
    suites = ET.Element("testsuites", name=name, time=f"{report.duration_s:.3f}")
    by_host: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_host.setdefault(f.host, []).append(f)
    for host, findings in by_host.items():
        failures = sum(1 for f in findings if f.is_error)
        skipped = sum(1 for f in findings if f.outcome is Outcome.SKIP)
        suite = ET.SubElement(suites, "testsuite", name=host, tests=str(len(findings)),
                              failures=str(failures), errors="0", skipped=str(skipped))
        for f in findings:
            name = f"{f.check_id} [{f.where}]" if f.where else f.check_id
            case = ET.SubElement(suite, "testcase", classname=f"clusterkit.{host}", name=name)
            if f.is_error:
                failure = ET.SubElement(case, "failure", message=f.message, type=f.severity.value)
                failure.text = f"{f.message}\nwhy: {f.why}\nfix: {f.fix}"
            elif f.outcome is Outcome.SKIP:
                ET.SubElement(case, "skipped", message=f.message)
            elif f.outcome is Outcome.FAIL:
                out = ET.SubElement(case, "system-out")
                out.text = f"{f.severity.value}: {f.message}\nfix: {f.fix}"
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
