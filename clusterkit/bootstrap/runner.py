"""Run a bootstrap playbook: each step checks every live node, applies what is missing, reports.

A node that fails a step leaves the run (later steps say it was skipped); the rest go on, and a
rerun picks it up again because every step starts from a check.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text

from clusterkit.bootstrap import cluster_steps, ssh_steps
from clusterkit.bootstrap.context import (
    FAILED,
    SKIPPED,
    AbortBootstrap,
    BootstrapContext,
    NodeOutcome,
    StepReport,
)
from clusterkit.bootstrap.playbook import StepSpec
from clusterkit.envpack.bootstrap_step import env_push

Step = Callable[[BootstrapContext, StepSpec], StepReport]

STEPS: dict[str, Step] = {
    "reachability": ssh_steps.reachability,
    "host-keys": ssh_steps.host_keys,
    "head-key": ssh_steps.head_key,
    "authorize-head": ssh_steps.authorize_head,
    "node-keys": ssh_steps.node_keys,
    "authorize-all": ssh_steps.authorize_all,
    "known-hosts": ssh_steps.known_hosts,
    "ssh-mesh": ssh_steps.ssh_mesh,
    "pdsh": cluster_steps.pdsh,
    "code-sync": cluster_steps.code_sync,
    "env-push": env_push,
    "deepspeed-env": cluster_steps.deepspeed_env,
}

_STYLE = {"ok": "green", "changed": "cyan", "would change": "yellow", "failed": "bold red", "skipped": "dim"}


def run_playbook(ctx: BootstrapContext, steps: list[StepSpec]) -> list[StepReport]:
    """Run the steps in order; returns every step's report (the last one may be an abort)."""
    reports: list[StepReport] = []
    for spec in steps:
        if spec.when == "sync" and ctx.sync_dir is None:
            continue
        left_out = dict(ctx.failed)
        ctx.console.rule(f"[bold]{spec.id}[/]: {spec.description.split(';')[0]}", align="left")
        try:
            report = STEPS[spec.id](ctx, spec)
        except AbortBootstrap as abort:
            report = StepReport(spec, note=f"ABORTED: {abort} | fix: {abort.fix}")
            reports.append(report)
            _print_step(ctx, report)
            break
        for host, reason in left_out.items():
            report.outcomes.setdefault(host, NodeOutcome(SKIPPED, [f"left out: {reason}"]))
        for host in report.failed_hosts:
            if host in ctx.names:
                ctx.failed.setdefault(host, f"{spec.id} failed")
        reports.append(report)
        _print_step(ctx, report)
    return reports


def _print_step(ctx: BootstrapContext, report: StepReport) -> None:
    for host, outcome in report.outcomes.items():
        if outcome.status == FAILED:
            line = Text(f"  {host}: ", style="bold")
            line.append(outcome.error or "failed", style="red")
            ctx.console.print(line, soft_wrap=True)
            if outcome.fix:
                ctx.console.print(Text(f"    fix: {outcome.fix}", style="green"), soft_wrap=True)
        elif outcome.actions and outcome.status != "ok":
            ctx.console.print(Text(f"  {host}: {'; '.join(outcome.actions)}"), soft_wrap=True)
    if report.note:
        style = "bold red" if report.note.startswith("ABORTED") else "dim"
        ctx.console.print(Text(f"  {report.note}", style=style), soft_wrap=True)


def summary_table(ctx: BootstrapContext, reports: list[StepReport]) -> Text:
    """One line per node: which steps were ok, changed, would change, failed or skipped."""
    title = "bootstrap summary" + (" (dry run: nothing was changed)" if ctx.dry_run else "")
    text = Text(title + "\n", style="bold")
    for host in dict.fromkeys(["head", *ctx.names]):
        by_status: dict[str, list[str]] = {}
        for report in reports:
            outcome = report.outcomes.get(host)
            if outcome is not None:
                by_status.setdefault(outcome.status, []).append(report.step.id)
        if not by_status:
            continue
        text.append(f"  {host}: ", style="bold")
        parts = [(status, steps) for status, steps in by_status.items()]
        for i, (status, steps) in enumerate(sorted(parts, key=lambda p: list(_STYLE).index(p[0]))):
            text.append("; " if i else "")
            text.append(status, style=_STYLE.get(status, ""))
            text.append(f" {', '.join(steps)}" if status != "ok" else f" ({len(steps)} steps)")
        text.append("\n")
    return text


def succeeded(reports: list[StepReport]) -> bool:
    return not any(r.failed_hosts or r.note.startswith("ABORTED") for r in reports)
