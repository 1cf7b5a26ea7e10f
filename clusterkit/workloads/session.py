"""Run one workload script across the cluster: ship it, build the ``deepspeed`` line, supervise, diagnose.

A :class:`WorkloadContext` holds what every workload of one command shares (hosts, training
interpreter, SSH settings, where the scripts are); :meth:`WorkloadContext.launch` runs a script on
all hosts or a subset, shows live progress per node, and returns the outcome with its diagnosis.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from clusterkit.inventory import ActiveHost
from clusterkit.launchline import LaunchPlan, build_launch_line, shell_line
from clusterkit.progress import LAST_HEARD, NO_OUTPUT, NodeProgress
from clusterkit.remote import SshSettings
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
from clusterkit.workloads.ship import Shipped, is_local, remote_cleanup, ship


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


def include_spec(hosts: Sequence[ActiveHost]) -> str:
    """DeepSpeed's ``--include`` naming exactly these hosts and slots."""
    return "@".join(f"{h.name}:{','.join(map(str, h.slots))}" for h in hosts)


def local_hostfile(slots: int) -> str:
    """A one-line hostfile for this machine (DeepSpeed then launches locally, without pdsh)."""
    directory = Path(tempfile.gettempdir()) / f"clusterkit-{os.getuid()}"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"hostfile-localhost-{slots}"
    path.write_text(f"localhost slots={slots}\n", encoding="utf-8")
    return str(path)


@dataclass
class WorkloadContext:
    """What every workload launch of one command shares."""

    hosts: list[ActiveHost]
    hostfile: str
    python: str
    #: Every host and slot of the hostfile (before --include/--exclude); None: the same as ``hosts``.
    hostfile_hosts: list[ActiveHost] | None = None
    settings: SshSettings = field(default_factory=SshSettings)
    console: Console = field(default_factory=lambda: Console(stderr=True))
    workdir: str | None = None
    #: ``workdir`` is shared by every node: the scripts are written there once, without SSH.
    shared_workdir: bool = False
    master_addr: str | None = None
    master_port: int = 29500
    launcher: str = "pdsh"
    deadline_s: float = 300.0
    grace_s: float = 15.0
    cwd: str = field(default_factory=os.getcwd)
    #: Every launch of this context, in the order they finished (for ``--log``).
    runs: list[WorkloadRun] = field(default_factory=list)
    _shipped: Shipped | None = None

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    @property
    def whole_hostfile(self) -> list[ActiveHost]:
        """Every host and slot of the hostfile, before --include/--exclude."""
        return self.hostfile_hosts if self.hostfile_hosts is not None else self.hosts

    @functools.cached_property
    def local(self) -> bool:
        """Every rank runs on this machine (one host, and it is this machine)."""
        return is_local(self.names)

    def ranks_per_node(self, hosts: Sequence[ActiveHost] | None = None) -> dict[str, int]:
        return {h.name: len(h.slots) for h in (hosts if hosts is not None else self.hosts)}

    def shipped(self) -> Shipped:
        """The scripts on every node (shipped on first use, then reused)."""
        if self._shipped is None:
            with NodeProgress(self.names, "shipping workload scripts", self.console) as progress:
                self._shipped = ship(self.names, self.settings, workdir=self.workdir, python=self.python,
                                     progress=None if self.local or self.shared_workdir else progress,
                                     shared=self.shared_workdir)
        return self._shipped

    def command_line(self, script_path: str, args: Sequence[str], chosen: Sequence[ActiveHost], run_id: str,
                     master_port: int | None = None) -> list[str]:
        """The ``deepspeed`` line for ``script_path`` on ``chosen`` (launchline's, plus what a workload needs)."""
        whole = self.whole_hostfile
        include = "" if [(h.name, h.slots) for h in chosen] == [(h.name, h.slots) for h in whole] \
            else include_spec(chosen)
        # One active host: DeepSpeed's runner starts it on this machine unless told --force_multi; when
        # it is this machine, no SSH at all and the master is loopback (as clusterkit launch does).
        here = len(chosen) == 1 and (self.local or is_local([chosen[0].name]))
        plan = LaunchPlan(python=self.python, hostfile=self.hostfile, script=script_path,
                          script_args=[*args, run_id_argument(run_id)], include=include, launcher=self.launcher,
                          master_addr=self.master_addr or ("127.0.0.1" if here else None),
                          master_port=master_port or self.master_port, ssh_port=self.settings.port,
                          force_multi=len(chosen) == 1 and not here, no_ssh_check=here)
        argv = build_launch_line(plan)
        return argv

    def in_launch_order(self, hosts: Sequence[ActiveHost]) -> list[ActiveHost]:
        """``hosts`` in the order the launcher ranks them: the hostfile's (DeepSpeed's runner keeps it
        whatever ``--include`` says; srun gives node ranks in the allocation's order), so node rank 0, the
        master, and the rank layout are the ones the launch really has (a pair asked as node3 + node1 is
        launched as node1 + node3)."""
        whole = [h.name for h in self.whole_hostfile]
        position = {name: index for index, name in enumerate(whole)}
        return sorted(hosts, key=lambda h: position.get(h.name, len(whole)))

    def task_nodes(self, names: list[str]) -> list[str] | None:
        """Which node each labelled task of the launch line is (None: the line labels lines with hosts)."""
        return None

    def cleanup_for(self, names: list[str]) -> Cleanup:
        """What kills a run's processes left on ``names`` after it was stopped."""
        return remote_cleanup(names if not self.local else ["localhost"], self.settings)

    def launch(self, script: str, args: Sequence[str], title: str, *, hosts: Sequence[ActiveHost] | None = None,
               master_port: int | None = None, deadline_s: float | None = None, env: dict[str, str] | None = None,
               quiet: bool = False) -> WorkloadRun:
        """Run ``script`` (a name in the shipped bundle) on ``hosts`` (default: all) under the deadline."""
        chosen = self.in_launch_order(hosts if hosts is not None else self.hosts)
        names = [h.name for h in chosen]
        run_id = new_run_id()
        argv = self.command_line(self.shipped().script(script), args, chosen, run_id, master_port)
        layout = rank_layout(chosen)
        launch = Launch(argv=argv, cwd=self.cwd, deadline_s=deadline_s or self.deadline_s, hosts=names,
                        run_id=run_id, env=env, grace_s=self.grace_s, task_nodes=self.task_nodes(names))
        cleanup = self.cleanup_for(names)
        if quiet:
            outcome = supervise(launch, cleanup=cleanup)
        else:
            with NodeProgress(names, title, self.console) as progress:
                tracker = _ProgressTracker(progress, layout)
                outcome = supervise(launch, cleanup=cleanup, on_line=tracker.on_line)
                tracker.finish(outcome)
        run = WorkloadRun(title, names, layout, outcome, diagnose(outcome, layout, title), launch.task_nodes)
        self.runs.append(run)
        return run


class _ProgressTracker:
    """Feeds a NodeProgress from a run's lines: when each node was last heard and what its ranks last
    said (with when they said it), done when its ranks are. Never a state not seen: a rank's last
    progress may be long past while its later output is stuck behind a saturated link."""

    def __init__(self, progress: NodeProgress, layout: dict[int, str]) -> None:
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
