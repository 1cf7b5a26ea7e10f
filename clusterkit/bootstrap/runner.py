"""Run a bootstrap playbook: each step checks every live node, applies what is missing, reports.

A node that fails a step leaves the run (later steps say it was skipped); the rest go on, and a
rerun picks it up again because every step starts from a check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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

StepFn = Callable[[BootstrapContext, StepSpec], StepReport]


@dataclass(frozen=True)
class Step:
    """A bootstrap step and the steps whose work it uses (a playbook must list those before it)."""

    run: StepFn
    needs: tuple[str, ...] = ()


STEPS: dict[str, Step] = {
    "reachability": Step(ssh_steps.reachability),
    "host-keys": Step(ssh_steps.host_keys, ("reachability",)),
    "head-key": Step(ssh_steps.head_key),
    "authorize-head": Step(ssh_steps.authorize_head, ("host-keys", "head-key")),
    "node-keys": Step(ssh_steps.node_keys, ("authorize-head",)),
    "authorize-all": Step(ssh_steps.authorize_all, ("head-key", "node-keys")),
    "known-hosts": Step(ssh_steps.known_hosts, ("host-keys", "authorize-head")),
    "ssh-mesh": Step(ssh_steps.ssh_mesh, ("authorize-all", "known-hosts")),
    "pdsh": Step(cluster_steps.pdsh, ("authorize-head",)),
    "code-sync": Step(cluster_steps.code_sync, ("authorize-head",)),
    "env-push": Step(env_push, ("ssh-mesh",)),  # relays node to node over the mesh
    "deepspeed-env": Step(cluster_steps.deepspeed_env, ("reachability", "authorize-head")),
}


def step_needs() -> dict[str, tuple[str, ...]]:
    """step id -> the steps it needs before it (what the playbook is checked against)."""
    return {name: step.needs for name, step in STEPS.items()}


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
            report = STEPS[spec.id].run(ctx, spec)
        except AbortBootstrap as abort:
            report = abort.report or StepReport(spec)
            report.note = f"ABORTED: {abort} | fix: {abort.fix}"
            report.aborted = True
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


def succeeded(reports: list[StepReport]) -> bool:
    return not any(r.failed_hosts or r.aborted for r in reports)
