"""What every ``clusterkit bench`` command shares: its workload context built from the flags and the
opened nodes, the facts its expectations come from, and how findings and tables are shown.

The bench commands (:mod:`clusterkit.commands.bench`, ``bench_traffic``, ``bench_gpu_zero``) import this
module and never each other.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.text import Text

from clusterkit.cluster import Nodes
from clusterkit.core.findings import Finding
from clusterkit.core.inventory import ActiveHost
from clusterkit.core.saved_run import SavedRun, figures_from_bench
from clusterkit.errors import ExitCode
from clusterkit.node.facts import Maybe, NodeFacts
from clusterkit.ui.progress import NodeProgress
from clusterkit.workloads.checkup import expectation_for
from clusterkit.workloads.collectives import CollectivesReport
from clusterkit.workloads.expect import Expectation
from clusterkit.workloads.plot import busbw_series, terminal_plot
from clusterkit.workloads.scripts import nccl_format as fmt
from clusterkit.workloads.session import ProgressViews, WorkloadContext


def node_views(console: Console) -> ProgressViews:
    """A live table per step (a line per node reaching its end where the output is no terminal)."""
    return lambda hosts, title: NodeProgress(hosts, title, console)


def make_context(args: argparse.Namespace, nodes: Nodes, console: Console) -> WorkloadContext:
    """The workload context of one bench command: its nodes and its flags."""

    def note(line: str) -> None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)

    return WorkloadContext(nodes=nodes, python=args.python or sys.executable, views=node_views(console), notes=note,
                           workdir=args.workdir, shared_workdir=args.shared_workdir, master_addr=args.master_addr,
                           master_port=args.master_port, launcher=args.launcher, deadline_s=args.deadline)


def gather_facts(args: argparse.Namespace, ctx: WorkloadContext, console: Console) -> dict[str, Maybe[NodeFacts]]:
    """Each node's facts for the expectations: --facts, or a survey without the cross-node probes."""
    if args.no_expect:
        return {}
    if args.facts:
        from clusterkit.dsconfig.resources import load_facts_file

        return load_facts_file(args.facts)
    from clusterkit.survey import SurveyOptions, survey_nodes

    options = SurveyOptions(python=ctx.python, timeout_s=args.timeout, probes=False)
    with NodeProgress(ctx.names, "collecting facts", console) as progress:
        facts, _ = survey_nodes(ctx.nodes, options, progress)
    return facts


def expectation(args: argparse.Namespace, ctx: WorkloadContext, facts: dict[str, Maybe[NodeFacts]],
                hosts: list[ActiveHost] | None = None) -> Expectation | None:
    """What the sweep should reach (None with --no-expect)."""
    return None if args.no_expect else expectation_for(ctx, facts, hosts)


def bench_run(workload: str, hosts: list[str], facts: Mapping[str, Maybe[NodeFacts]], findings: list[Finding],
              doc: Mapping[str, Any]) -> SavedRun:
    """A bench run as the history keeps it: the facts surveyed for it, its findings and its figures."""
    return SavedRun("bench", hosts=list(hosts), facts=dict(facts), findings=list(findings),
                    figures=figures_from_bench(workload, doc), workload=workload)


def write_log(args: argparse.Namespace, ctx: WorkloadContext) -> None:
    """``--log``: every launch of the command, line by line."""
    if getattr(args, "log", None):
        from clusterkit.workloads.session import write_log as write

        write(args.log, ctx.runs)


def exit_code(findings: list[Finding]) -> int:
    return int(ExitCode.PROBLEMS if any(f.is_error for f in findings) else ExitCode.OK)


def show_findings(findings: list[Finding], tails: dict[str, list[str]], hosts: list[str], console: Console,
                  duration_s: float) -> None:
    """Findings as the doctor shows them, then the log tail of every failing node and rank."""
    from clusterkit.core.findings_report import DoctorReport
    from clusterkit.ui.report import render_table

    report = DoctorReport(hosts=hosts, facts={}, findings=findings, duration_s=duration_s)
    render_table(report, console)
    for where, lines in tails.items():
        console.print(Text(f"log tail: {where}", style="bold"))
        for line in lines:
            console.print(Text(f"  {line}", style="dim"), soft_wrap=True)


def show_search(search: Any, console: Console) -> None:
    """The slow-node search's evidence, round by round."""
    if search is None:
        return
    console.print(Text("slow-node search", style="bold underline"))
    for line in search.evidence():
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)


def render_collectives(report: CollectivesReport, console: Console, plot: bool = True) -> None:
    """nccl-tests' tables, the expectation and the curve."""
    result = report.result
    if result is None:
        return
    console.print(Text(f"# {result['world_size']} ranks on {', '.join(report.run.hosts)}, backend "
                       f"{result['backend']}, device {result['device']}, dtype {result['dtype']}", style="bold"),
                  soft_wrap=True)
    if not report.complete:
        console.print(Text("# cut short: the rows measured before the run ended", style="bold yellow"))
    for op, body in result["ops"].items():
        console.print(f"#\n# {op}", highlight=False, markup=False)
        for line in fmt.header_lines():
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        for row in body["rows"]:
            if row.get("requested_bytes"):
                console.print(f"# {fmt.human_bytes(row['requested_bytes'])} would not finish before the deadline: "
                              f"{fmt.human_bytes(row['size'])} instead", highlight=False, markup=False)
            console.print(fmt.format_row(row), highlight=False, markup=False, soft_wrap=True)
        if body.get("not_measured"):
            console.print(f"# {fmt.human_bytes(min(body['not_measured']))} and up not measured", highlight=False,
                          markup=False)
        for line in fmt.footer_lines(int(body["wrong"]), float(body["avg_busbw"])):
            console.print(line, highlight=False, markup=False)
    if report.expectation is not None:
        console.print(report.expectation.explain(), style="dim", soft_wrap=True, highlight=False, markup=False)
    if plot:
        expected = report.expectation.busbw_gbs if report.expectation else None
        for line in terminal_plot(busbw_series(result), expected):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
