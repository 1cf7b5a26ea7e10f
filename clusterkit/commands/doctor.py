"""``clusterkit doctor [HOSTFILE]``: collect facts, run the checks, render the findings.

Without a hostfile it checks this machine in-process. With one it ships the agent to every node over
SSH (see :mod:`clusterkit.remote`), runs node checks on each node's facts and then the cluster-wide
checks. Collection and SSH live elsewhere; this module only wires them and picks a renderer.
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
    ClusterView,
    NodeContext,
    run_cluster_checks,
    run_node_checks,
    select_checks,
)
from clusterkit.commands.common import add_ssh_arguments, id_list, ssh_settings
from clusterkit.errors import ExitCode, UsageError
from clusterkit.facts import ClusterProbes, Maybe, NodeFacts, Unavailable
from clusterkit.inventory import ActiveHost, load_hostfile, select_hosts
from clusterkit.report import DoctorReport, render_json, render_junit, render_table
from clusterkit.survey import DEFAULT_MASTER_PORT, MESH_MODES, SurveyOptions, survey_cluster


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check this machine, or every node of a hostfile, before a DeepSpeed launch",
        description="Collect facts (GPUs, NVLink/PCIe, InfiniBand, ECC, CUDA libraries, torch/DeepSpeed/"
                    "NCCL, SSH/pdsh, shm, ulimits) and report what would break a DeepSpeed run, where, "
                    "and the command that fixes it. Without HOSTFILE, checks this machine.",
    )
    parser.add_argument("hostfile", nargs="?", help="DeepSpeed hostfile (HOST slots=N per line)")
    parser.add_argument("--include", default="", metavar="SPEC",
                        help="DeepSpeed-style NODE[:SLOT,...][@NODE...] subset of the hostfile")
    parser.add_argument("--exclude", default="", metavar="SPEC", help="DeepSpeed-style subset to leave out")
    parser.add_argument("--python", metavar="PATH",
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
    add_ssh_arguments(parser)
    from clusterkit.commands.bench import add_doctor_flag

    add_doctor_flag(parser)
    parser.set_defaults(run=run)


def _selected(args: argparse.Namespace) -> list[CheckSpec]:
    load_checks()
    return select_checks(args.only, args.skip)


def gather_local(specs: list[CheckSpec], python: str | None, timeout_s: float, fresh: bool = False) -> DoctorReport:
    """Collect this machine's facts in-process and judge them."""
    from clusterkit.collect.node import CollectOptions, collect_node

    started = time.time()
    options = CollectOptions(section_timeout_s=timeout_s, use_probe_cache=not fresh)
    if python:
        options.python = python
    facts = collect_node(options)
    host = facts.host.hostname
    findings = run_node_checks(specs, facts, NodeContext(host=host))
    return DoctorReport(hosts=[host], facts={host: facts}, findings=findings, started_at=started,
                        duration_s=time.time() - started)


def judge_cluster(specs: list[CheckSpec], hosts: list[ActiveHost], facts: dict[str, Maybe[NodeFacts]],
                  probes: ClusterProbes | None, started: float, hostfile: str) -> DoctorReport:
    """Run node checks on every reachable node, then the cluster-wide checks."""
    findings = []
    for host in hosts:
        node = facts.get(host.name, Unavailable("not collected"))
        if not isinstance(node, Unavailable):
            ctx = NodeContext(host=host.name, expected_gpus=len(host.slots),
                              is_launch_node=probes is None or probes.head == host.name)
            findings += run_node_checks(specs, node, ctx)
    findings += run_cluster_checks(specs, ClusterView(hosts=hosts, nodes=facts, probes=probes))
    return DoctorReport(hosts=[h.name for h in hosts], facts=facts, findings=findings, hostfile=hostfile,
                        started_at=started, duration_s=time.time() - started)


def run(args: argparse.Namespace) -> int:
    specs = _selected(args)
    err = Console(stderr=True)
    if args.hostfile:
        hosts = select_hosts(load_hostfile(args.hostfile), args.include, args.exclude)
        options = SurveyOptions(timeout_s=args.timeout, master_port=args.master_port,
                                probes=not args.no_probes, fresh=args.fresh, mesh=args.mesh)
        if args.python:
            options.python = args.python
        started = time.time()
        facts, probes = survey_cluster(hosts, ssh_settings(args), options, err)
        report = judge_cluster(specs, hosts, facts, probes, started, args.hostfile)
    else:
        if args.include or args.exclude:
            raise UsageError("--include/--exclude need a HOSTFILE")
        with err.status("Collecting facts on this machine…", spinner="dots"):
            report = gather_local(specs, args.python, args.timeout, fresh=args.fresh)
    if args.workloads:  # clusterkit bench's workloads, after the checks; their findings join the report
        from clusterkit.commands.bench import workloads_for_doctor

        report.findings += workloads_for_doctor(args, dict(report.facts))
        report.duration_s = time.time() - report.started_at
    if args.junit:
        Path(args.junit).write_text(render_junit(report), encoding="utf-8")
    if args.json:
        print(render_json(report, include_facts=not args.no_facts))
    else:
        render_table(report, Console(), show_passed=args.show_passed)
    return int(ExitCode.PROBLEMS if report.has_errors else ExitCode.OK)
