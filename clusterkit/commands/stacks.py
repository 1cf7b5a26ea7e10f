"""``clusterkit stacks [HOSTFILE]``: every training rank's Python stack on every node, grouped, with what
they say (a hang and its culprit, a frozen node, a straggler with ``--sample``).

A command of its own, not a ``monitor`` key or a ``doctor`` check: it is what a user types when a job is
stuck, against a job that is running (doctor judges nodes before a job, monitor watches one live); it
takes the same node flags as every command (HOSTFILE over SSH, a Slurm allocation through srun).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from rich.console import Console

from clusterkit.commands.common import add_hostfile_arguments, add_ssh_arguments
from clusterkit.commands.flags import opened, target_from_args
from clusterkit.commands.slurm import add_slurm_arguments
from clusterkit.errors import ExitCode, UsageError
from clusterkit.stacks.report import build_report, report_doc
from clusterkit.stacks.take import VIAS, StacksOptions, take_stacks
from clusterkit.ui.stacks import render

#: The most seconds each of --timeout, --every, --sample may be (a typo of 1e9 must not hang the command).
MAX_SECONDS = 600.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stacks",
        help="every training rank's Python stack on every node, grouped; names a hang's culprit",
        description="Find the training ranks on every node (processes with RANK and LOCAL_RANK in their "
                    "environment), read each one's Python stack with py-spy (put on nodes that lack it), or, "
                    "where py-spy may not read them (no ptrace rights), ask ranks started by clusterkit launch "
                    "to write their own on a signal. Identical stacks are printed once with the ranks that "
                    "share them, the odd ones first. Two dumps apart tell a hang (nothing moved) from a job that "
                    "runs; the ranks not where the others wait are named with what they do.",
        epilog="exit codes: 0 nothing wrong found, 1 a finding (hang, frozen or silent node, straggler, "
               "unreadable ranks) or no rank found, 2 usage error.")
    add_hostfile_arguments(parser, required=False)
    parser.add_argument("--json", action="store_true", help="every rank's full stacks, groups and findings as JSON")
    parser.add_argument("--native", action="store_true", help="native (C/C++) frames too (py-spy --native)")
    parser.add_argument("--nonblocking", action="store_true",
                        help="never stop a rank while reading it (py-spy --nonblocking; a running rank's stack "
                             "may then be torn); by default each rank is stopped for the few ms py-spy reads it")
    parser.add_argument("--via", choices=VIAS, default="auto",
                        help="py-spy, signal (the stack hook clusterkit launch puts in ranks: no ptrace rights "
                             "needed), or auto: py-spy, the hook where py-spy is refused (default)")
    parser.add_argument("--dumps", type=int, default=2, metavar="N",
                        help="dumps to take (default: 2; a hang is judged from 2 or more: nothing moved)")
    parser.add_argument("--every", type=float, default=2.0, metavar="SECONDS",
                        help="seconds from one dump to the next (default: 2)")
    parser.add_argument("--sample", type=float, default=0.0, metavar="SECONDS",
                        help="also sample every rank this long (py-spy record, never stopping it) and name a "
                             "straggler: the rank whose time goes elsewhere while its peers wait")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="per rank and dump (default: 10); a node that does not answer in time is named")
    parser.add_argument("--job", metavar="ADDR:PORT",
                        help="the job to show, by its MASTER_ADDR:MASTER_PORT, where the nodes run several "
                             "(default: the one with the most ranks)")
    parser.add_argument("--frames", type=int, default=12, metavar="N", help="frames shown per group (default: 12)")
    add_ssh_arguments(parser)
    add_slurm_arguments(parser)
    parser.set_defaults(run=run)


def options_from(args: argparse.Namespace) -> StacksOptions:
    """The flags as options, every number checked first (``UsageError`` otherwise)."""
    for flag, value, least in (("--timeout", args.timeout, 0.1), ("--every", args.every, 0.0),
                               ("--sample", args.sample, 0.0)):
        if not (math.isfinite(value) and least <= value <= MAX_SECONDS):
            raise UsageError(f"{flag} {value:g}: must be {least:g} to {MAX_SECONDS:g} seconds")
    if not 1 <= args.dumps <= 20:
        raise UsageError(f"--dumps {args.dumps}: must be 1 to 20")
    if args.frames < 1:
        raise UsageError(f"--frames {args.frames}: must be 1 or more")
    if args.sample and args.via == "signal":
        raise UsageError("--sample samples with py-spy: it cannot go with --via signal")
    return StacksOptions(via=args.via, native=args.native, nonblocking=args.nonblocking, timeout_s=args.timeout,
                         dumps=args.dumps, every_s=args.every, sample_s=args.sample)


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    target = target_from_args(args)
    err = Console(stderr=True)
    with opened(target) as nodes:
        if not args.json:
            err.print(f"reading the ranks' stacks on {nodes.describe()} ({options.dumps} dump(s))...", style="dim",
                      markup=False)
        taken = take_stacks(nodes, options, place_timeout_s=max(30.0, args.connect_timeout * 3))
    report = build_report(taken, options, args.job)
    if args.json:
        json.dump(report_doc(report), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        render(report, Console(), frames=args.frames)
    return int(ExitCode.PROBLEMS if report.problems else ExitCode.OK)
