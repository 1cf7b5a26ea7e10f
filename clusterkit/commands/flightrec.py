"""``clusterkit flightrec [HOSTFILE]``: read every rank's flight-recorder dump from every node of a job that
``clusterkit launch`` started, and name the first collective the ranks disagree on and the ranks that never
reached it.

A live job is asked for fresh dumps first (``--no-ask`` reads what is there: the dumps NCCL writes on its
watchdog's timeout, or those the ranks wrote at exit). The reading is :func:`~clusterkit.stacks.flightrec.
read_flight_records`; this module only parses flags and prints.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from rich.console import Console
from rich.table import Table

from clusterkit.commands.common import add_hostfile_arguments, add_ssh_arguments
from clusterkit.commands.flags import opened, target_from_args
from clusterkit.commands.slurm import add_slurm_arguments
from clusterkit.core.findings import Outcome
from clusterkit.core.flightrec import RUNS_ROOT, Collective
from clusterkit.errors import ExitCode, UsageError
from clusterkit.stacks.flightrec import FlightReport, read_flight_records

#: A typo of 1e9 must not leave the command waiting on a node for ever.
MAX_TIMEOUT_S = 3600.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "flightrec",
        help="read the flight recorder of a job clusterkit launched: the first collective its ranks disagree on",
        description="Ask every rank of a job started by `clusterkit launch` for a fresh flight-recorder dump "
                    "(torch's record of each rank's last collectives), read them from every node, and name the "
                    "first collective the ranks disagree on (its number, op and sizes) and the ranks that never "
                    "reached it. A rank that does not answer the request is named too.",
        epilog=f"example: clusterkit flightrec hostfile                 # each node's newest job under {RUNS_ROOT}\n"
               "         clusterkit flightrec hostfile --job 20261204-181502-3f9a --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_hostfile_arguments(parser, required=False)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--job", metavar="ID", help="the job id `clusterkit launch` printed (default: each node's "
                                                    "newest job)")
    which.add_argument("--dir", metavar="PATH", help="a directory holding the dumps (rank_N files) on every node")
    parser.add_argument("--no-ask", action="store_true",
                        help="read the dumps already written; do not ask the live ranks for fresh ones")
    parser.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS",
                        help="per-node deadline (default: 20)")
    parser.add_argument("--json", action="store_true", help="print JSON (every rank's collectives, the findings)")
    add_ssh_arguments(parser)
    add_slurm_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.job is not None and ("/" in args.job or not args.job.strip()):
        raise UsageError(f"--job {args.job!r}: give the id `clusterkit launch` printed (or --dir PATH)")
    if args.dir is not None and not args.dir.startswith("/"):
        raise UsageError(f"--dir {args.dir}: give an absolute path (the same on every node)")
    if not (math.isfinite(args.timeout) and 0.1 <= args.timeout <= MAX_TIMEOUT_S):
        raise UsageError(f"--timeout {args.timeout:g}: must be 0.1 to {MAX_TIMEOUT_S:g} seconds")
    target = target_from_args(args)
    with opened(target) as nodes:
        report = read_flight_records(nodes, args.job or args.dir, args.timeout, ask=not args.no_ask)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        show(report, Console())
    failed = [f for f in report.findings() if f.outcome is Outcome.FAIL and f.is_error]
    return int(ExitCode.PROBLEMS if failed or not report.traces else ExitCode.OK)


def report_json(report: FlightReport) -> dict[str, Any]:
    """Every rank's last collective per group and the findings, for scripts."""
    disagreement = report.disagreement
    return {
        "directories": report.directories,
        "other_jobs": report.other_jobs,
        "unreachable": report.unreachable,
        "stale_ranks": {str(r): h for r, h in report.stale.items()},
        "unreadable": report.unreadable,
        "ranks": [{"rank": t.rank, "host": t.host, "collectives": len(t.collectives),
                   "last": [{"group": c.group, "seq": c.seq, "op": c.op, "input_sizes": c.input_sizes}
                            for c in _last_per_group(t.collectives)]} for t in report.traces],
        "disagreement": None if disagreement is None else {
            "group": disagreement.group, "seq": disagreement.seq, "op": disagreement.expected.op,
            "input_sizes": disagreement.expected.input_sizes, "missing_ranks": disagreement.missing,
            "variants": [{"op": c.op, "input_sizes": c.input_sizes, "ranks": ranks}
                         for c, ranks in disagreement.variants]},
        "findings": [{"id": f.check_id, "severity": f.severity.value, "outcome": f.outcome.value, "host": f.host,
                      "where": f.where, "message": f.message, "fix": f.fix} for f in report.findings()],
    }


def _last_per_group(collectives: list[Collective]) -> list[Collective]:
    last: dict[str, Collective] = {}
    for call in collectives:
        if call.group not in last or call.seq > last[call.group].seq:
            last[call.group] = call
    return list(last.values())


def show(report: FlightReport, console: Console) -> None:
    """Each rank's last collective, then the findings with their fixes."""
    if not report.traces:
        console.print("[red]no flight-recorder dumps read[/] (was the job started by `clusterkit launch` "
                      "without --no-flight-recorder?)")
    table = Table(title="last collective per rank", show_lines=False)
    for column in ("rank", "node", "group", "#", "op"):
        table.add_column(column)
    for trace in report.traces:
        for call in _last_per_group(trace.collectives):
            table.add_row(str(trace.rank), trace.host, call.group, str(call.seq), call.describe())
    if report.traces:
        console.print(table)
    for finding in report.findings():
        style = {"error": "red", "warning": "yellow"}.get(finding.severity.value, "green")
        if finding.outcome is Outcome.PASS:
            console.print(f"[green]ok[/] {finding.message}", soft_wrap=True)
            continue
        console.print(f"[{style}]{finding.severity.value}[/] {finding.check_id}: {finding.message}", soft_wrap=True,
                      markup=True, highlight=False)
        console.print(f"  fix: {finding.fix}", style="dim", soft_wrap=True)
