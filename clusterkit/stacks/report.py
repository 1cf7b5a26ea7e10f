"""The outcome of ``clusterkit stacks`` as one value: the dumps, the groups of the last one, the findings,
and its plain-data form for ``--json`` (every rank's every thread, its pause). Pure."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any

from clusterkit.core.findings import Finding, Severity
from clusterkit.errors import UsageError
from clusterkit.stacks.group import Group, group_ranks, unchanged
from clusterkit.stacks.judge import judge_rounds
from clusterkit.stacks.model import RankStack, Round
from clusterkit.stacks.take import StacksOptions, Taken

JSON_SCHEMA_VERSION = 1


@dataclass
class StacksReport:
    taken: Taken
    options: StacksOptions
    groups: list[Group]
    findings: list[Finding]
    #: The job shown (``MASTER_ADDR:PORT``), and the others found on the nodes with their rank counts.
    job: str = ""
    other_jobs: dict[str, int] = field(default_factory=dict)

    @property
    def last(self) -> Round:
        return self.taken.rounds[-1]

    @property
    def moving(self) -> bool | None:
        """Whether some rank's stack changed between the last two dumps (None with one dump)."""
        rounds = self.taken.rounds
        if len(rounds) < 2:
            return None
        readable = [r for r in rounds[-1].ranks if r.main is not None and not r.stopped]
        return len(unchanged(rounds[-2].ranks, rounds[-1].ranks)) != len(readable)

    @property
    def problems(self) -> bool:
        return any(f.severity in (Severity.ERROR, Severity.WARNING) for f in self.findings) or not self.last.ranks

    def max_pause_s(self) -> float | None:
        pauses = [r.paused_at_most_s for r in self.last.ranks if r.paused_at_most_s is not None]
        return max(pauses) if pauses else None


def build_report(taken: Taken, options: StacksOptions, job: str | None = None) -> StacksReport:
    """Groups and findings of one job: ``job`` (``MASTER_ADDR:PORT``), else the one with the most ranks."""
    jobs = taken.rounds[-1].jobs()
    if job is not None and job not in jobs:
        raise UsageError(f"--job {job}: no rank of that job on the nodes; found: {', '.join(jobs) or 'no job'}")
    chosen = job if job is not None else next(iter(jobs), "")
    if len(jobs) > 1:
        taken = replace(taken, rounds=[r.only(chosen) for r in taken.rounds])
    others = {j: n for j, n in jobs.items() if j != chosen}
    return StacksReport(taken, options, group_ranks(taken.rounds[-1].ranks), judge_rounds(taken.rounds),
                        chosen, others)


def _rank_doc(rank: RankStack) -> dict[str, Any]:
    doc = dataclasses.asdict(rank)
    doc["label"] = rank.label
    if not rank.folded:
        del doc["folded"]
    return doc


def report_doc(report: StacksReport) -> dict[str, Any]:
    """``--json``: every dump with every rank's threads and pause, the last dump's groups, the findings."""
    return {
        "schema": JSON_SCHEMA_VERSION,
        "options": dataclasses.asdict(report.options),
        "moving": report.moving,
        "job": report.job,
        "other_jobs": report.other_jobs,
        "dumps": [{"started_at": r.started_at, "seconds": round(r.seconds, 3),
                   "nodes": [{"host": n.host, "error": n.error or None, "fix": n.fix or None,
                              "ptrace_scope": n.ptrace_scope, "uid": n.uid,
                              "ranks": [_rank_doc(x) for x in n.ranks]} for n in r.nodes]}
                  for r in report.taken.rounds],
        "groups": [{"text": g.describe(), "ranks": [r.rank for r in g.ranks],
                    "hosts": sorted({r.host for r in g.ranks}),
                    "place": dataclasses.asdict(g.place) if g.place else None,
                    "frames": [dataclasses.asdict(f) for f in g.frames]} for g in report.groups],
        "findings": [dataclasses.asdict(f) for f in report.findings],
        "pyspy_errors": report.taken.pyspy_errors,
    }
