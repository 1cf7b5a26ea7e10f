"""``clusterkit stacks`` on a terminal: a header, each group of ranks once (odd ones first) with its main
thread's frames, the nodes that did not answer, then the findings with their fixes."""

from __future__ import annotations

import io

from rich.console import Console
from rich.text import Text

from clusterkit.core.findings import Severity
from clusterkit.core.hostlist import compress
from clusterkit.stacks.model import short_path
from clusterkit.stacks.report import StacksReport

STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def header(report: StacksReport) -> str:
    last = report.last
    ranks = last.ranks
    hosts = compress(n.host for n in last.nodes)
    methods = sorted({r.method for r in ranks if r.method})
    dumps = len(report.taken.rounds)
    spacing = f" {report.options.every_s:g}s apart" if dumps > 1 else ""
    pause = report.max_pause_s()
    paused = (f", each rank paused at most {pause * 1000:.0f} ms" if pause
              else ", no rank paused" if pause == 0.0 else "")
    took = f"; the last dump took {last.seconds:.2f}s"
    return (f"{len(ranks)} rank(s) on {hosts}, {dumps} dump(s){spacing} "
            f"({', '.join(methods) or 'no stack read'}{paused}){took}")


def render(report: StacksReport, console: Console, frames: int = 12) -> None:
    console.print(Text("clusterkit stacks: ", style="bold") + Text(header(report)), soft_wrap=True)
    if not report.last.ranks and not report.last.silent:
        console.print("no training rank (a process with RANK and LOCAL_RANK in its environment) on any node; "
                      "processes of other users are not visible: run as the ranks' user or as root",
                      style="yellow", markup=False)
    if report.other_jobs:
        others = ", ".join(f"{job} ({n} ranks)" for job, n in report.other_jobs.items())
        console.print(f"job {report.job} shown; also on these nodes: {others} (--job ADDR:PORT shows one)",
                      style="yellow", markup=False)
    for group in report.groups:
        odd = len(report.groups) > 1 and group is not report.groups[-1]
        console.print(Text(group.describe(), style="bold" if odd else ""), soft_wrap=True)
        for frame in group.frames[:frames]:
            line = f"    {frame.name} {short_path(frame.file)}:{frame.line}"
            console.print(Text(line + (f"  `{frame.code}`" if frame.code else ""), style="dim"), soft_wrap=True)
        if len(group.frames) > frames:
            console.print(f"    ... {len(group.frames) - frames} outer frame(s) (--frames N, --json)", style="dim",
                          markup=False)
    for node in report.last.silent:
        console.print(Text(f"{node.host}: no answer: {node.error}", style="red"), soft_wrap=True)
    if report.moving is True:
        console.print("the stacks changed between the last two dumps: the job is moving", style="green",
                      markup=False)
    for f in report.findings:
        console.print(Text.assemble((f"{f.severity.value} ", STYLE[f.severity]), (f"{f.check_id} ", "bold"),
                                    f"[{f.host}] {f.message}"), soft_wrap=True)
        console.print(Text(f"    fix: {f.fix}", style="dim"), soft_wrap=True)


def as_text(report: StacksReport, frames: int = 12, width: int = 120) -> Text:
    """The same view as text with its styles, for the monitor's stacks screen (``t``)."""
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system="truecolor")
    render(report, console, frames)
    out = console.file
    assert isinstance(out, io.StringIO)
    return Text.from_ansi(out.getvalue())
