"""``clusterkit monitor [HOSTFILE]``: a live view of every node and rank while training runs.

Picks a source (agents streaming over SSH, over Slurm, this machine, or ``--replay``), optionally records it,
then either runs the Textual app or, with ``--once``, waits for a first full round and prints it
(``--json`` for scripts). Samples, streams and alerts live elsewhere; this module only wires them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from rich.console import Console
from rich.table import Table

from clusterkit.cluster import HostStream
from clusterkit.cluster.remote.stream import StreamState
from clusterkit.commands.common import add_hostfile_arguments, add_ssh_arguments
from clusterkit.commands.flags import opened, target_from_args
from clusterkit.commands.slurm import add_slurm_arguments
from clusterkit.errors import ExitCode, UsageError
from clusterkit.history import History
from clusterkit.monitor.baseline import baseline_from_run
from clusterkit.monitor.progress import LogFollower, Progress
from clusterkit.monitor.sources import (
    LiveSource,
    Recorder,
    ReplaySource,
    Source,
    stream_args,
)
from clusterkit.monitor.views import find_stragglers, rank_rows, summarize_cluster
from clusterkit.node.collect.sampler import MAX_INTERVAL_S, MIN_INTERVAL_S, valid_interval
from clusterkit.stacks.report import StacksReport, build_report, report_doc
from clusterkit.stacks.take import StacksOptions, take_stacks
from clusterkit.ui.tui.thresholds import Thresholds, all_alerts, job_stall

JSON_SCHEMA_VERSION = 1


def register(subparsers: Any) -> None:
    fields = ", ".join(f.name for f in dataclasses.fields(Thresholds))
    parser = subparsers.add_parser(
        "monitor",
        help="live view of every node, GPU and training rank (Textual), or --once --json for scripts",
        description="Stream one sample per interval from an agent on every node over one SSH channel each "
                    "(GPUs from NVML, CPU, RAM, network, and the training ranks found by their RANK/LOCAL_RANK "
                    "environment) and show them: a row per node, a node's GPUs with history, the job's ranks, "
                    "alerts and stragglers. Without HOSTFILE, this machine; inside a Slurm allocation (or with "
                    "--slurm), the job's nodes, each through its own srun step beside the job's (no SSH).",
        epilog="keys in the view: enter node, j job view, s/r sort, f faults only, / filter, ? help, q quit. "
               "exit codes with --once: 0 every node answered and no critical alert, 1 otherwise.")
    add_hostfile_arguments(parser, required=False)
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help=f"sampling interval on the nodes, {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} s "
                             "(default: 1)")
    parser.add_argument("--slow-every", type=int, default=0, metavar="N",
                        help="also read PCIe throughput and energy every N samples (default: 0, never; "
                             "each read blocks NVML ~20 ms per GPU)")
    parser.add_argument("--once", action="store_true",
                        help="wait for a first full round of samples (or the replay's end), print it, exit")
    parser.add_argument("--json", action="store_true", help="with --once: print JSON instead of a table")
    parser.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                        help="with --once: give up on silent nodes after this long (default: connect timeout "
                             "+ 3 intervals)")
    parser.add_argument("--record", metavar="FILE", help="write every sample and link change to FILE (JSON lines)")
    parser.add_argument("--replay", metavar="FILE", help="play a recording instead of connecting")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="replay speed (default: 1 = real time; 0 = paused, n steps one interval)")
    parser.add_argument("--log", metavar="FILE",
                        help="follow the job's log (the launcher's output) and show step, loss, samples/s and "
                             "step time from DeepSpeed's progress lines (recorded with --record)")
    parser.add_argument("--baseline", nargs="?", const="", default=None, metavar="RUN",
                        help="flag GPUs whose live figures fall outside a saved doctor run (throttling they did "
                             "not have, a lower max clock or power limit, a clock under load below their peers' "
                             "then): the run named good (else the last), or a name, id or file")
    parser.add_argument("--alert", action="append", default=[], metavar="NAME=VALUE",
                        help=f"change a threshold (repeatable); names: {fields}")
    add_ssh_arguments(parser)
    add_slurm_arguments(parser)
    parser.set_defaults(run=run)


def check_numbers(args: argparse.Namespace) -> None:
    """Every number in range before anything starts (inf and nan included): ``UsageError`` otherwise."""
    if not valid_interval(args.interval):
        raise UsageError(f"--interval {args.interval:g}: must be {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} seconds")
    if args.wait is not None and not (math.isfinite(args.wait) and args.wait >= 0):
        raise UsageError(f"--wait {args.wait:g}: must be a number of seconds, 0 or more")
    if not (math.isfinite(args.speed) and args.speed >= 0):
        raise UsageError(f"--speed {args.speed:g}: must be 0 (paused) or more")
    if args.slow_every < 0:
        raise UsageError(f"--slow-every {args.slow_every}: must be 0 (never) or more")


#: Takes every rank's stack on the watched nodes, grouped and judged (``t`` in the view; a stall in --once).
StacksTaker = Callable[[], StacksReport]


def build_source(args: argparse.Namespace, thresholds: Thresholds, stack: ExitStack
                 ) -> tuple[Source, str, StacksTaker | None]:
    """The source the flags ask for, what it watches (for the title) and how to take its ranks' stacks
    (none for a replay); what it holds open (an allocation clusterkit made) is left on ``stack``."""
    if args.replay:
        if args.hostfile or args.record or args.log:
            raise UsageError("--replay plays a recording: give no HOSTFILE, --record or --log with it "
                             "(a recording made with --log holds the job's progress)")
        if args.slurm or any(getattr(args, name) for name in SLURM_REQUEST_OPTIONS):
            raise UsageError("--replay plays a recording and reaches no nodes: give no --slurm, --partition, "
                             "--nodes, --nodelist, --slurm-time or --slurm-args with it")
        return ReplaySource(args.replay, speed=args.speed), args.replay, None
    log = LogFollower(args.log) if args.log else None
    if log is not None and (why := log.check()) is not None:
        raise UsageError(f"--log: {why}")
    target = target_from_args(args)
    nodes = stack.enter_context(opened(target))
    hosts = nodes.names
    slots = {} if target.only_this_machine else {h.name: len(h.slots) for h in nodes.hosts}
    where = target.hostfile or nodes.describe()

    def streams(on_line: Callable[[str, str, float], None], on_state: Callable[[StreamState], None]
                ) -> list[HostStream]:
        return nodes.agent_streams(stream_args(args.interval, args.slow_every), on_line, on_state,
                                   stale_after_s=thresholds.stale_after_s, lost_after_s=thresholds.lost_after_s)

    def stacks() -> StacksReport:
        options = StacksOptions()
        return build_report(take_stacks(nodes, options, place_timeout_s=max(30.0, 3 * args.connect_timeout)), options)

    recorder = Recorder(args.record, hosts, slots, args.interval) if args.record else None
    return LiveSource(hosts, slots, streams, args.interval, recorder=recorder, log=log), where, stacks


#: The allocation request's options (they imply --slurm).
SLURM_REQUEST_OPTIONS = ("partition", "nodes", "nodelist", "slurm_time", "slurm_args")
def wait_for_round(source: Source, deadline_s: float) -> None:
    """Until every node sent two samples (so rates are known) or the deadline passes."""
    if isinstance(source, ReplaySource):
        source.seek(source.end_time)
        return
    source.start()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        source.tick()
        with source.state.lock:
            if all(len(v.history) >= 2 for v in source.state.nodes.values()):
                break
        time.sleep(0.05)
    source.tick()


def report(source: Source, thresholds: Thresholds) -> dict[str, Any]:
    """The state as plain data: nodes, ranks, stragglers, alerts and the job's progress (``--json``)."""
    state = source.state
    summaries = summarize_cluster(state, thresholds.stale_after_s)
    ranks = rank_rows(state, thresholds.stale_after_s, thresholds.stall_after_s)
    stragglers = find_stragglers(state, thresholds.stale_after_s, thresholds.straggler_ratio,
                                 thresholds.straggler_window)
    alerts = all_alerts(summaries, ranks, stragglers, state, thresholds)
    stall = job_stall(state, ranks, thresholds)
    gpus = {h: [dataclasses.asdict(g) for g in (v.last.gpus if v.last else ())] for h, v in state.nodes.items()}
    return {"schema": JSON_SCHEMA_VERSION, "time": state.now, "live": source.live,
            "nodes": [dict(dataclasses.asdict(s), gpus=gpus[s.host]) for s in summaries],
            "ranks": [dataclasses.asdict(r) for r in ranks],
            "stragglers": [dataclasses.asdict(s) for s in stragglers],
            "alerts": [dataclasses.asdict(a) for a in alerts],
            "progress": state.progress.to_record() if state.progress else None,
            "stall": stall.to_record() if stall else None,
            "notice": source.notice,
            "thresholds": dataclasses.asdict(thresholds)}


def stacks_record(stacks: StacksReport) -> dict[str, Any]:
    """The stall's evidence for --once: the groups and findings of ``clusterkit stacks --json``."""
    doc = report_doc(stacks)
    return {key: doc[key] for key in ("moving", "job", "groups", "findings")}


def print_table(doc: dict[str, Any]) -> None:
    from clusterkit.ui.tui import cells

    table = Table(title="clusterkit monitor", title_justify="left")
    for column in ("node", "status", "age", "GPUs", "util avg", "worst temp", "CPU", "ranks", "why"):
        table.add_column(column)
    for n in doc["nodes"]:
        table.add_row(n["host"], cells.status(n["status"]), cells.age(n["age_s"]), str(n["gpus_up"]),
                      cells.pct(n["util_avg"]), "-" if n["worst_temp_c"] is None else f"{n['worst_temp_c']:.0f}°C",
                      cells.pct(n["cpu_pct"]), str(n["ranks"]), n["why"] or "")
    console = Console()
    console.print(table)
    for r in doc["ranks"]:
        console.print(f"rank {r['rank']} (local {r['local_rank']}) on {r['host']} pid {r['pid']}: {r['status']}")
    if doc["progress"]:
        console.print("job: " + Progress.from_record(doc["progress"]).describe(), markup=False, highlight=False)
    if doc["notice"]:
        console.print(doc["notice"], style="yellow", markup=False, highlight=False)
    for a in doc["alerts"]:
        console.print(f"[{'bold red' if a['level'] == 'crit' else 'yellow'}]{a['level']}[/] {a['host']}: {a['text']}")


def run(args: argparse.Namespace) -> int:
    check_numbers(args)
    thresholds = Thresholds.for_interval(args.interval).with_overrides(args.alert)
    if args.json and not args.once:
        raise UsageError("--json prints one round for scripts: use it with --once")
    with ExitStack() as stack:  # holds an allocation made for this run until the view or round is done
        source, where, stacks = build_source(args, thresholds, stack)
        if args.baseline is not None:
            source.state.baseline = baseline_from_run(*History().reference(args.baseline or None, "doctor"))
        if not args.once:
            from clusterkit.ui.stacks import as_text
            from clusterkit.ui.tui.app import MonitorApp

            provider = None if stacks is None else (lambda: as_text(stacks()))
            MonitorApp(source, thresholds, title=f"clusterkit monitor {where}", stacks=provider).run()
            return ExitCode.OK
        try:
            wait_for_round(source, args.wait if args.wait is not None
                           else args.connect_timeout + 3 * args.interval + 2)
            doc = report(source, thresholds)
            if doc["stall"] is not None and stacks is not None:
                doc["stacks"] = stacks_record(stacks())  # what the ranks do while the job is stalled
        finally:
            source.stop()
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_table(doc)
    bad = any(n["status"] != "up" for n in doc["nodes"]) or any(a["level"] == "crit" for a in doc["alerts"])
    return ExitCode.PROBLEMS if bad else ExitCode.OK
