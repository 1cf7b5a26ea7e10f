"""``clusterkit doctor [HOSTFILE]``: collect facts, run the checks, render the findings.

Without a hostfile (or an allocation) it checks this machine in-process. With one it surveys every node
through the transport the flags choose (:mod:`clusterkit.commands.flags`), runs node checks on each
node's facts and then the cluster-wide checks. Collection and transports live elsewhere; this module
only wires them and picks a renderer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from clusterkit.checks import load_checks
from clusterkit.checks.registry import (
    CheckSpec,
    select_checks,
)
from clusterkit.cluster import Nodes
from clusterkit.commands.common import (
    add_hostfile_arguments,
    add_ssh_arguments,
    id_list,
    interpreter_path,
)
from clusterkit.commands.flags import opened, target_from_args
from clusterkit.commands.runs import add_run_arguments, check_run_arguments, compare_and_save
from clusterkit.commands.slurm import add_slurm_arguments
from clusterkit.core.saved_run import SavedRun
from clusterkit.doctor import doctor_cluster, doctor_here
from clusterkit.errors import ExitCode
from clusterkit.survey import DEFAULT_MASTER_PORT, MESH_MODES, SurveyOptions
from clusterkit.ui.progress import nodes_view
from clusterkit.ui.report import DoctorReport, render_json, render_junit, render_table
from clusterkit.workloads.checkup import WORKLOADS, chosen_workloads


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check this machine, or every node of a hostfile, before a DeepSpeed launch",
        description="Collect facts (GPUs, NVLink/PCIe, InfiniBand, ECC, CUDA libraries, torch/DeepSpeed/"
                    "NCCL, SSH/pdsh, shm, ulimits) and report what would break a DeepSpeed run, where, "
                    "and the command that fixes it. Without HOSTFILE, checks this machine.",
    )
    add_hostfile_arguments(parser, required=False)
    parser.add_argument("--python", metavar="PATH", type=interpreter_path,
                        help="training interpreter to inspect on every node (default: this interpreter, "
                             f"{sys.executable})")
    parser.add_argument("--json", action="store_true", help="print the JSON report (docs/doctor-json.md)")
    parser.add_argument("--no-facts", action="store_true", help="leave raw facts out of --json output")
    parser.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report to FILE")
    parser.add_argument("--only", type=id_list, default=[], metavar="IDS",
                        help="comma-separated check ids or tags to run (see `clusterkit checks`)")
    parser.add_argument("--skip", type=id_list, default=[], metavar="IDS",
                        help="comma-separated check ids or tags to leave out")
    parser.add_argument("--show-passed", action="store_true", help="also list passed and skipped checks")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="per-node deadline for collecting facts (default: 30)")
    parser.add_argument("--master-port", type=int, default=DEFAULT_MASTER_PORT, metavar="PORT",
                        help=f"rendezvous port to test on the first host (default: {DEFAULT_MASTER_PORT})")
    parser.add_argument("--fresh", action="store_true",
                        help="re-probe every Python env (import torch/DeepSpeed) even where nothing changed "
                             "since the last probe")
    parser.add_argument("--mesh", choices=MESH_MODES, default="static",
                        help="SSH between nodes: static (default) judges every pair from keys, authorized_keys "
                             "and known_hosts without logging in; ring also logs in live from each node to the "
                             "next; full logs in along every pair (N x N logins)")
    parser.add_argument("--no-probes", action="store_true",
                        help="skip the cross-node probes (SSH all-to-all, master port)")
    add_run_arguments(parser)
    add_ssh_arguments(parser)
    add_slurm_arguments(parser)
    parser.add_argument("--workloads", nargs="?", const=",".join(WORKLOADS), default="", metavar="LIST",
                        help=f"after the checks, run workloads across the nodes ({', '.join(WORKLOADS)}; "
                             "default all): their failures join the findings")
    parser.set_defaults(run=run)


def _selected(args: argparse.Namespace) -> list[CheckSpec]:
    load_checks()
    return select_checks(args.only, args.skip)


def run(args: argparse.Namespace) -> int:
    check_run_arguments(args)
    specs = _selected(args)
    wanted = chosen_workloads(args.workloads)
    err = Console(stderr=True)
    options = SurveyOptions(timeout_s=args.timeout, master_port=args.master_port,
                            probes=not args.no_probes, fresh=args.fresh, mesh=args.mesh)
    if args.python:
        options.python = args.python
    target = target_from_args(args)
    if target.only_this_machine:
        with err.status("Collecting facts on this machine…", spinner="dots"):
            report = doctor_here(specs, args.python, args.timeout, fresh=args.fresh)
        if wanted:
            with opened(target) as nodes:
                _run_workloads(args, wanted, report, nodes)
    else:
        with opened(target) as nodes:
            with nodes_view(nodes, "surveying" if options.probes else "collecting facts", err) as progress:
                report, _ = doctor_cluster(specs, nodes, options, target.hostfile, progress)
            if wanted:  # on the nodes the doctor checked, through the same transport
                _run_workloads(args, wanted, report, nodes)
    run_saved = SavedRun("doctor", hosts=report.hosts, facts=report.facts, findings=list(report.findings),
                         started_at=report.started_at)
    report.findings += compare_and_save(args, run_saved, err)
    if args.junit:
        Path(args.junit).write_text(render_junit(report), encoding="utf-8")
    if args.json:
        print(render_json(report, include_facts=not args.no_facts))
    else:
        render_table(report, Console(), show_passed=args.show_passed)
    return int(ExitCode.PROBLEMS if report.has_errors else ExitCode.OK)


def _run_workloads(args: argparse.Namespace, wanted: list[str], report: DoctorReport, nodes: Nodes) -> None:
    """``--workloads``: clusterkit bench's workloads after the checks, on the nodes the doctor checked;
    their findings join the report."""
    from rich.text import Text

    from clusterkit.ui.progress import NodeProgress
    from clusterkit.workloads.checkup import run_workloads
    from clusterkit.workloads.session import WorkloadContext

    err = Console(stderr=True)
    ctx = WorkloadContext(nodes=nodes, python=args.python or sys.executable,
                          views=lambda hosts, title: NodeProgress(hosts, title, err))
    report.findings += run_workloads(ctx, wanted, dict(report.facts),
                                     lambda name: err.print(Text(f"workload: {name}", style="bold")))
    report.duration_s = time.time() - report.started_at
