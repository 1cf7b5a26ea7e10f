"""Run a bootstrap playbook: each step checks every live node, applies what is missing, reports.

A node that fails a step leaves the run (later steps say it was skipped); the rest go on, and a
rerun picks it up again because every step starts from a check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clusterkit.bootstrap import cluster_steps, ssh_steps
from clusterkit.bootstrap.context import (
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


def run_playbook(ctx: BootstrapContext, steps: list[StepSpec]) -> list[StepReport]:
    """Run the steps in order; returns every step's report (the last one may be an abort)."""
    reports: list[StepReport] = []
    for spec in steps:
        if spec.when == "sync" and ctx.sync_dir is None:
            continue
        left_out = dict(ctx.failed)
        ctx.view.step_started(spec)
        try:
            report = STEPS[spec.id].run(ctx, spec)
        except AbortBootstrap as abort:
            report = abort.report or StepReport(spec)
            report.note = f"ABORTED: {abort} | fix: {abort.fix}"
            report.aborted = True
            reports.append(report)
            ctx.view.step_done(report)
            break
        for host, reason in left_out.items():
            report.outcomes.setdefault(host, NodeOutcome(SKIPPED, [f"left out: {reason}"]))
        for host in report.failed_hosts:
            if host in ctx.names:
                ctx.failed.setdefault(host, f"{spec.id} failed")
        reports.append(report)
        ctx.view.step_done(report)
    return reports


def succeeded(reports: list[StepReport]) -> bool:
    return not any(r.failed_hosts or r.aborted for r in reports)
