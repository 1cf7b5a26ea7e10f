"""Run one workload script across the cluster: ship it, build the launch line, supervise, diagnose.

A :class:`WorkloadContext` holds what every workload of one command shares (the :class:`Nodes`, the
training interpreter, where the scripts are); :meth:`WorkloadContext.launch` runs a script on all
hosts or a subset through the nodes' own launch line (DeepSpeed's runner over pdsh, srun, or this
machine), reports each node's progress to a listener, and returns the outcome with its diagnosis. A
stopped run's ranks left on the nodes are ended by :meth:`Nodes.cleanup`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.cluster import LaunchStyle, Nodes, ProgressListener
from clusterkit.core.dsenv import deepspeed_env_values
from clusterkit.core.inventory import ActiveHost
from clusterkit.core.launchline import LaunchPlan, shell_line
from clusterkit.core.slurmlaunch import runner_exports
from clusterkit.workloads.diagnose import Diagnosis, diagnose
from clusterkit.workloads.run import (
    Cleanup,
    Launch,
    LogLine,
    RunOutcome,
    new_run_id,
    run_id_argument,
    split_line,
    supervise,
)
from clusterkit.workloads.scripts.workload_io import DONE, PROGRESS
from clusterkit.workloads.ship import Shipped, ship

#: A node heard from: its detail says what its ranks last said (a view shows how long ago).
LAST_HEARD = "last heard"
#: A node not heard from since the start.
NO_OUTPUT = "no output for"
#: How long the clean-up of a stopped run may take on each node.
CLEANUP_TIMEOUT_S = 20.0

#: ``views(hosts, title)``: a per-node progress view for one step (shipping, one launch), open for its length.
ProgressViews = Callable[[list[str], str], AbstractContextManager[ProgressListener]]


class _Unseen:
    """A listener that shows nothing (the library's default: it never prints)."""

    def update(self, host: str, state: str, detail: str = "") -> None:
        """Nothing to show."""


@contextmanager
def no_view(hosts: list[str], title: str) -> Iterator[ProgressListener]:
    """No progress shown."""
    yield _Unseen()


@dataclass
class WorkloadRun:
    """A finished launch of one workload: what ran, how it ended, and why it failed if it did."""

    title: str
    hosts: list[str]
    rank_hosts: dict[int, str]
    outcome: RunOutcome
    diagnosis: Diagnosis
    #: srun --label's task number -> node, for a launch through srun.
    task_nodes: list[str] | None = None

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    @property
    def command(self) -> str:
        return shell_line(self.outcome.argv)


LOG_SCHEMA = "clusterkit.workload-log/v1"


def run_record(run: WorkloadRun) -> dict[str, Any]:
    """Everything a run printed, line by line as the runner printed it, with how it ended (``--log``)."""
    outcome = run.outcome
    return {"workload": run.title, "hosts": run.hosts, "rank_hosts": {str(r): h for r, h in run.rank_hosts.items()},
            **({"task_nodes": run.task_nodes} if run.task_nodes else {}),
            "argv": outcome.argv, "run_id": outcome.run_id, "returncode": outcome.returncode,
            "timed_out": outcome.timed_out, "stopped_after_failure": outcome.stopped_after_failure,
            "start_error": outcome.start_error, "duration_s": round(outcome.duration_s, 3),
            "cleanup": outcome.cleanup,
            "lines": [[round(line.seconds, 3), line.stream, line.raw] for line in outcome.lines]}


def outcome_from_record(record: dict[str, Any]) -> tuple[RunOutcome, dict[int, str]]:
    """Rebuild a run from its record (lines split again as they were when captured)."""
    hosts = list(record["hosts"])
    lines = []
    for seconds, stream, raw in record["lines"]:
        node, rank, text = split_line(raw, hosts, record.get("task_nodes"))
        lines.append(LogLine(float(seconds), str(stream), node, rank, text, raw))
    outcome = RunOutcome(list(record["argv"]), str(record.get("run_id", "")), record.get("returncode"),
                         float(record.get("duration_s", 0.0)), lines, timed_out=bool(record.get("timed_out")),
                         stopped_after_failure=bool(record.get("stopped_after_failure")),
                         cleanup=dict(record.get("cleanup") or {}), start_error=record.get("start_error"))
    return outcome, {int(r): h for r, h in record["rank_hosts"].items()}


def write_log(path: str, runs: Sequence[WorkloadRun]) -> None:
    """The records of ``runs`` as one JSON document."""
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"schema": LOG_SCHEMA, "runs": [run_record(r) for r in runs]}, indent=1) + "\n",
                          encoding="utf-8")


def rank_layout(hosts: Sequence[ActiveHost]) -> dict[int, str]:
    """Global rank -> host, as DeepSpeed numbers ranks: hostfile order, then slot order."""
    layout: dict[int, str] = {}
    for host in hosts:
        for _ in host.slots:
            layout[len(layout)] = host.name
    return layout


@dataclass
class WorkloadContext:
    """What every workload launch of one command shares."""

    nodes: Nodes
    python: str
    #: Opens a progress view per step (a terminal table from commands; none by default).
    views: ProgressViews = no_view
    #: Where a line worth telling goes as it happens (the slow-node search's pair results).
    notes: Callable[[str], None] | None = None
    workdir: str | None = None
    #: ``workdir`` is shared by every node: the scripts are written there once, through no transport.
    shared_workdir: bool = False
    #: None: the launch's own choice (DeepSpeed's runner finds it; through srun, the first node's address).
    master_addr: str | None = None
    master_port: int = 29500
    #: DeepSpeed's multi-node launcher where its runner starts the ranks (pdsh).
    launcher: str = "pdsh"
    deadline_s: float = 300.0
    grace_s: float = 15.0
    cwd: str = field(default_factory=os.getcwd)
    #: What every rank gets where no runner adds it (PYTHONPATH with the launch directory, .deepspeed_env);
    #: None: what DeepSpeed's runner would add, read from ``cwd`` and this environment.
    exports: dict[str, str] | None = None
    #: Every launch of this context, in the order they finished (for ``--log``).
    runs: list[WorkloadRun] = field(default_factory=list)
    _shipped: Shipped | None = None

    @property
    def hosts(self) -> list[ActiveHost]:
        return self.nodes.hosts

    @property
    def names(self) -> list[str]:
        return self.nodes.names

    def ranks_per_node(self, hosts: Sequence[ActiveHost] | None = None) -> dict[str, int]:
        return {h.name: len(h.slots) for h in (hosts if hosts is not None else self.hosts)}

    def shipped(self) -> Shipped:
        """The scripts on every node (shipped on first use, then reused)."""
        if self._shipped is None:
            with self.views(self.names, "shipping workload scripts") as progress:
                self._shipped = ship(self.nodes, workdir=self.workdir, python=self.python,
                                     shared=self.shared_workdir, progress=progress)
        return self._shipped

    def plan(self, script_path: str, args: Sequence[str], run_id: str, master_port: int | None = None) -> LaunchPlan:
        """What to launch (the nodes' launch line adds where and how)."""
        return LaunchPlan(python=self.python, hostfile="", script=script_path,
                          script_args=[*args, run_id_argument(run_id)], launcher=self.launcher,
                          master_addr=self.master_addr, master_port=master_port or self.master_port)

    def style(self) -> LaunchStyle:
        """How every workload runs: lines labelled with their node, in ``cwd``, sharing the job's resources."""
        exports = self.exports
        if exports is None:
            exports = runner_exports(self.cwd, os.environ.get("PYTHONPATH"), deepspeed_env_values(self.cwd))
        return LaunchStyle(labelled=True, cwd=self.cwd, exports=exports, overlap=True)

    def in_launch_order(self, hosts: Sequence[ActiveHost]) -> list[ActiveHost]:
        """``hosts`` in the order the launcher ranks them: the nodes' (DeepSpeed's runner keeps the
        hostfile's whatever ``--include`` says; srun gives node ranks in the allocation's order), so node
        rank 0, the master, and the rank layout are the ones the launch really has (a pair asked as
        node3 + node1 is launched as node1 + node3)."""
        order = self.names
        position = {name: index for index, name in enumerate(order)}
        return sorted(hosts, key=lambda h: position.get(h.name, len(order)))

    def cleanup_for(self, names: list[str]) -> Cleanup:
        """What kills a run's processes left on ``names`` after it was stopped (by its run id)."""

        def cleanup(run_id: str) -> dict[str, str]:
            done = self.nodes.cleanup(run_id, CLEANUP_TIMEOUT_S, hosts=names)
            return {h: (str(r.value) if r.ok and r.value is not None else f"clean-up failed: {r.error}")
                    for h, r in done.items()}

        return cleanup

    def launch(self, script: str, args: Sequence[str], title: str, *, hosts: Sequence[ActiveHost] | None = None,
               master_port: int | None = None, deadline_s: float | None = None, env: dict[str, str] | None = None,
               quiet: bool = False) -> WorkloadRun:
        """Run ``script`` (a name in the shipped bundle) on ``hosts`` (default: all) under the deadline."""
        chosen = self.in_launch_order(hosts if hosts is not None else self.hosts)
        names = [h.name for h in chosen]
        run_id = new_run_id()
        plan = self.plan(self.shipped().script(script), args, run_id, master_port)
        line = self.nodes.launch_line(plan, chosen, self.style())
        layout = rank_layout(chosen)
        launch = Launch(argv=line.argv, cwd=self.cwd, deadline_s=deadline_s or self.deadline_s, hosts=names,
                        run_id=run_id, env={**line.env, **(env or {})} or None, grace_s=self.grace_s,
                        task_nodes=line.task_nodes)
        cleanup = self.cleanup_for(names)
        if quiet:
            outcome = supervise(launch, cleanup=cleanup)
        else:
            with self.views(names, title) as progress:
                tracker = _ProgressTracker(progress, layout)
                outcome = supervise(launch, cleanup=cleanup, on_line=tracker.on_line)
                tracker.finish(outcome)
        run = WorkloadRun(title, names, layout, outcome, diagnose(outcome, layout, title), launch.task_nodes)
        self.runs.append(run)
        return run


class _ProgressTracker:
    """Feeds a progress listener from a run's lines: when each node was last heard and what its ranks last
    said (with when they said it), done when its ranks are. Never a state not seen: a rank's last
    progress may be long past while its later output is stuck behind a saturated link."""

    def __init__(self, progress: ProgressListener, layout: dict[int, str]) -> None:
        self.progress = progress
        self.layout = layout
        self.pending = {host: {r for r, h in layout.items() if h == host} for host in set(layout.values())}
        self.said: dict[str, dict[int, tuple[str, float]]] = {host: {} for host in self.pending}
        for host in self.pending:
            progress.update(host, NO_OUTPUT)

    def _node(self, line: LogLine) -> str | None:
        if line.rank is not None and line.rank in self.layout:
            return self.layout[line.rank]
        return line.node

    def on_line(self, line: LogLine) -> None:
        node = self._node(line)
        if node is None or node not in self.pending:
            return
        if line.text.startswith(DONE) and line.rank is not None:
            self.pending[node].discard(line.rank)
            if not self.pending[node]:
                self.progress.update(node, "done")
                return
        if not self.pending[node]:
            return
        if line.text.startswith(PROGRESS) and line.rank is not None:
            self.said[node][line.rank] = (line.text[len(PROGRESS):].strip(), line.seconds)
        detail = "; ".join(f"rank {r}: {text} (at {at:.0f}s)" for r, (text, at) in sorted(self.said[node].items())
                           if r in self.pending[node])
        self.progress.update(node, LAST_HEARD, detail)

    def finish(self, outcome: RunOutcome) -> None:
        news = outcome.rank_news()
        for node, ranks in self.pending.items():
            if not ranks:
                continue
            detail = f"ranks {sorted(ranks)} not done; " + "; ".join(
                f"rank {r}: {news.get(r, 'nothing heard from it')}" for r in sorted(ranks)[:4])
            self.progress.update(node, "timed out" if outcome.timed_out else "failed", detail)
