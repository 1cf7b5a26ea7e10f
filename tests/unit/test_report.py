"""Renderers present findings faithfully: table grouped by severity, stable JSON, valid JUnit."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from rich.console import Console

from clusterkit.core.findings import Finding, Outcome, Severity
from clusterkit.node.facts import Unavailable
from clusterkit.ui.report import (
    JSON_SCHEMA,
    DoctorReport,
    group_findings,
    render_json,
    render_junit,
    render_table,
    summary_line,
)


def finding(check: str, severity: Severity, outcome: Outcome, host: str = "node1", where: str = "",
            message: str = "msg") -> Finding:
    return Finding(check, severity, outcome, host, where, message, "why it matters", "the fix")


REPORT = DoctorReport(
    hosts=["node1", "node2"],
    facts={"node1": Unavailable("stub"), "node2": Unavailable("no answer within 30s")},
    findings=[
        finding("pcie-link-degraded", Severity.WARNING, Outcome.FAIL, where="GPU 0", message="Gen3 x8"),
        finding("row-remap-pending", Severity.ERROR, Outcome.FAIL, where="GPU 3", message="reset needed"),
        finding("ecc-disabled", Severity.WARNING, Outcome.PASS),
        finding("nvlink-link-down", Severity.ERROR, Outcome.SKIP, message="no NVLink"),
        finding("bf16-unsupported", Severity.INFO, Outcome.FAIL, host="node2", message="V100"),
    ],
    duration_s=1.234,
)


def test_counts_split_failures_by_severity_and_count_passes_and_skips() -> None:
    assert REPORT.counts() == {"error": 1, "warning": 1, "info": 1, "pass": 1, "skip": 1}
    assert REPORT.has_errors
    assert summary_line(REPORT) == "1 error, 1 warning, 1 info, 1 passed, 1 skipped on 2 hosts in 1.2s"


def test_table_lists_errors_before_warnings_with_where_and_fix() -> None:
    console = Console(record=True, width=160)
    render_table(REPORT, console)
    text = console.export_text()
    assert text.index("Errors (1)") < text.index("Warnings (1)") < text.index("Info (1)")
    assert "row-remap-pending" in text and "GPU 3" in text and "the fix" in text
    assert "node2: no facts (no answer within 30s)" in text
    assert "ecc-disabled" not in text  # passed checks only with --show-passed


def test_brief_table_keeps_fixes_for_errors_and_gives_other_checks_one_line_with_their_hosts() -> None:
    report = DoctorReport(hosts=["node1", "node2"], facts={}, findings=[
        finding("ulimit-memlock-low", Severity.WARNING, Outcome.FAIL, host="node1", message="8 MiB"),
        finding("ulimit-memlock-low", Severity.WARNING, Outcome.FAIL, host="node2", message="8 MiB"),
        finding("interpreter-missing", Severity.ERROR, Outcome.FAIL, host="node2", message="no /opt/env"),
    ])
    console = Console(record=True, width=160)
    render_table(report, console, brief=True)
    text = console.export_text()
    assert " ! ulimit-memlock-low [node[1-2]] 8 MiB" in text
    assert text.count("the fix") == 1  # the error's block only
    assert "no /opt/env" in text


def test_json_follows_the_documented_schema() -> None:
    doc = json.loads(render_json(REPORT))
    assert doc["schema"] == JSON_SCHEMA
    assert set(doc) >= {"clusterkit_version", "started_at", "duration_s", "hostfile", "hosts", "summary",
                        "findings", "facts"}
    assert doc["summary"]["ok"] is False
    first = doc["findings"][0]
    assert set(first) == {"check", "severity", "outcome", "host", "where", "message", "why", "fix"}
    assert doc["facts"]["node2"] == {"unavailable": "no answer within 30s"}
    assert "facts" not in json.loads(render_json(REPORT, include_facts=False))


def test_junit_fails_only_error_findings_and_marks_skips() -> None:
    root = ET.fromstring(render_junit(REPORT))
    cases = {case.get("name"): case for case in root.iter("testcase")}
    assert cases["row-remap-pending [GPU 3]"].find("failure") is not None
    assert cases["pcie-link-degraded [GPU 0]"].find("failure") is None
    assert cases["pcie-link-degraded [GPU 0]"].find("system-out") is not None
    assert cases["nvlink-link-down"].find("skipped") is not None
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert suites["node1"].get("failures") == "1"


def test_identical_findings_on_many_hosts_are_one_block_with_a_host_list() -> None:
    hosts = [f"node{i:02d}" for i in range(1, 65)]
    findings = [Finding("pdsh-missing", Severity.ERROR, Outcome.FAIL, host, "PATH",
                        f"pdsh is not on {host}'s PATH", "why", f"on {host}: sudo apt-get install -y pdsh")
                for host in hosts]
    findings.append(Finding("clock-skew", Severity.WARNING, Outcome.FAIL, "node07", "node07",
                            "clock on node07 is +3.00s off", "why", "chrony"))
    console = Console(record=True, width=100)
    render_table(DoctorReport(hosts=hosts, facts={}, findings=findings), console)
    text = console.export_text()
    assert text.count("pdsh-missing") == 1
    assert " ✗ [node[01-64]] pdsh-missing  PATH" in text
    assert "pdsh is not on node[01-64]'s PATH" in text
    assert "fix: on node[01-64]: sudo apt-get install -y pdsh" in text
    assert " ! [node07] clock-skew  node07" in text


def test_findings_that_differ_beyond_the_host_name_stay_apart() -> None:
    findings = [Finding("clock-skew", Severity.WARNING, Outcome.FAIL, host, host, f"clock on {host} is {off} off",
                        "why", "chrony") for host, off in (("node1", "+2s"), ("node10", "+2s"), ("node2", "-5s"))]
    groups = group_findings(findings)
    assert [g.hosts for g in groups] == [["node1", "node10"], ["node2"]]
    assert groups[0].text(findings[0].message) == "clock on node[1,10] is +2s off"


def test_json_keeps_one_finding_per_host() -> None:
    findings = [finding("pdsh-missing", Severity.ERROR, Outcome.FAIL, host=h) for h in ("node1", "node2")]
    doc = json.loads(render_json(DoctorReport(hosts=["node1", "node2"], facts={}, findings=findings)))
    assert [f["host"] for f in doc["findings"]] == ["node1", "node2"]
