"""Bootstrap on a terminal: each step's rule and what changed or failed per host, progress while a step
runs on many hosts, and the closing summary (one line per machine)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from clusterkit.bootstrap.context import FAILED, BootstrapContext, StepReport
from clusterkit.bootstrap.playbook import StepSpec
from clusterkit.ui.progress import NodeProgress

_STYLE = {"ok": "green", "changed": "cyan", "would change": "yellow", "failed": "bold red", "skipped": "dim"}


class RichBootstrapView:
    """The terminal view ``clusterkit bootstrap`` shows (on ``console``, standard error)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def step_started(self, spec: StepSpec) -> None:
        self.console.rule(f"[bold]{spec.id}[/]: {spec.description.split(';')[0]}", align="left")

    def progress(self, hosts: Sequence[str], title: str) -> NodeProgress:
        return NodeProgress(list(hosts), title, self.console)

    def step_done(self, report: StepReport) -> None:
        for host, outcome in report.outcomes.items():
            if outcome.status == FAILED:
                line = Text(f"  {host}: ", style="bold")
                line.append(outcome.error or "failed", style="red")
                self.console.print(line, soft_wrap=True)
                if outcome.fix:
                    self.console.print(Text(f"    fix: {outcome.fix}", style="green"), soft_wrap=True)
            elif outcome.actions and outcome.status != "ok":
                self.console.print(Text(f"  {host}: {'; '.join(outcome.actions)}"), soft_wrap=True)
        if report.note:
            style = "bold red" if report.note.startswith("ABORTED") else "dim"
            self.console.print(Text(f"  {report.note}", style=style), soft_wrap=True)


def summary_table(ctx: BootstrapContext, reports: list[StepReport]) -> Text:
    """One line per machine: the steps that failed (with why), changed, would change, were ok or skipped,
    and, when the run stopped early, that the later steps did not run."""
    title = "bootstrap summary" + (" (dry run: nothing was changed)" if ctx.dry_run else "")
    text = Text(title + "\n", style="bold")
    stopped = next((r.step.id for r in reports if r.aborted), None)
    for host in dict.fromkeys(["head", *ctx.names]):
        by_status: dict[str, list[str]] = {}
        errors: list[str] = []
        for report in reports:
            outcome = report.outcomes.get(host)
            if outcome is not None:
                by_status.setdefault(outcome.status, []).append(report.step.id)
                if outcome.status == FAILED:
                    errors.append(f"{report.step.id}: {outcome.error or 'failed'}")
        if not by_status:
            continue
        label = "this machine" if host == "head" else host
        text.append(f"  {label}: ", style="bold")
        parts = sorted(by_status.items(), key=lambda p: list(_STYLE).index(p[0]) if p[0] in _STYLE else 99)
        parts.sort(key=lambda p: p[0] != FAILED)
        for i, (status, steps) in enumerate(parts):
            text.append("; " if i else "")
            text.append(status.upper() if status == FAILED else status, style=_STYLE.get(status, ""))
            text.append(f" {', '.join(steps)}")
        if stopped is not None:
            text.append(f"; later steps not run (the run stopped at {stopped})", style="dim")
        text.append("\n")
        for error in errors:
            text.append(f"      {error}\n", style="red")
    return text
