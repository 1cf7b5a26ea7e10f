"""``clusterkit bench collectives|find-slow|traffic|gpu|zero``: prove the cluster trains, and how fast.

Every workload runs inside the training env through DeepSpeed's own launcher across the hostfile
(NCCL on GPUs, gloo on CPU), under a deadline, with live progress per node. Failures come back as
findings (cause, node and rank, fix) with each failing rank's log tail. Without a hostfile the
workload runs on this machine (``--slots`` ranks). Every workload runs in a Slurm allocation as
doctor does (inside one without a HOSTFILE, or ``--slurm``): started by srun, as ``clusterkit launch``
starts a job there. The flags name the nodes once (:mod:`clusterkit.commands.flags`); the workloads
(:mod:`clusterkit.workloads`) take those nodes, whatever reaches them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from clusterkit.cluster import Nodes
from clusterkit.commands.bench_common import (
    bench_run,
    exit_code,
    expectation,
    gather_facts,
    make_context,
    render_collectives,
    show_findings,
    show_search,
    write_log,
)
from clusterkit.commands.bench_inputs import check_bench_arguments
from clusterkit.commands.common import add_ssh_arguments, interpreter_path
from clusterkit.commands.flags import opened, target_from_args
from clusterkit.commands.runs import add_run_arguments, check_run_arguments, compare_and_save
from clusterkit.commands.slurm import add_slurm_arguments
from clusterkit.errors import UsageError
from clusterkit.workloads.session import WorkloadContext

#: A bench command, run on the nodes its flags name.
BenchRun = Callable[[argparse.Namespace, Nodes], int]



def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench", help="run workloads across the cluster: collective bandwidth, slow-node search, "
                      "ZeRO traffic, GPU health, ZeRO smoke suite",
        description="Workloads that run inside the training env through DeepSpeed's launcher: they prove the "
                    "cluster trains and measure how fast. Exit 0 when every check passed, 1 when one failed.")
    commands = parser.add_subparsers(dest="bench_command", metavar="WORKLOAD", required=True)

    coll = commands.add_parser("collectives", help="all_reduce, all_gather, reduce_scatter, all_to_all, broadcast "
                                                   "over a sweep of sizes, in nccl-tests' layout")
    _common(coll)
    _sweep_arguments(coll)
    coll.add_argument("--baseline", action="store_true",
                      help="also time a bare torch.distributed loop per size (the bench's own overhead)")
    coll.add_argument("--rounds", type=int, default=1, help="with --baseline: interleaved rounds per size")
    coll.add_argument("--find-slow", action="store_true",
                      help="when a collective fails or is slow against the expectation, search for the node")
    _search_arguments(coll)
    add_run_arguments(coll)
    coll.set_defaults(run=run_collectives_command)

    slow = commands.add_parser("find-slow", help="name the slow or broken node (or link) with two-node rings, "
                                                 "and write a hostfile without it")
    _common(slow)
    _search_arguments(slow)
    add_run_arguments(slow)
    slow.set_defaults(run=run_find_slow_command)

    traffic = commands.add_parser("traffic", help="a step's communication time under ZeRO 0-3 (and ZeRO++), "
                                                  "measured at the job's bucket sizes")
    _common(traffic)
    traffic.add_argument("--deepspeed-config", metavar="FILE", help="the job's DeepSpeed config (buckets, dtype)")
    model = traffic.add_mutually_exclusive_group(required=True)
    model.add_argument("--params", metavar="N", help="model parameters (7B, 350M, 6.7e9)")
    model.add_argument("--hf-config", metavar="CONFIG_JSON", help="HF config.json to count parameters from")
    traffic.add_argument("--max-bytes", default="1G", metavar="SIZE",
                         help="largest message measured; larger buckets are extrapolated at its bandwidth")
    traffic.add_argument("--iters", type=int, default=10)
    traffic.set_defaults(run=run_traffic_command)

    from clusterkit.commands import bench_gpu_zero

    bench_gpu_zero.register(commands, _common)
    for workload in commands.choices.values():  # every workload can run in a Slurm allocation, through srun
        add_slurm_arguments(workload)
        workload.set_defaults(run=_on_nodes(workload.get_default("run")))


def _on_nodes(run: BenchRun) -> Callable[[argparse.Namespace], int]:
    """``run`` with its flags checked first, then on the nodes they name (opened once: an allocation
    asked for is released after)."""

    def wrapped(args: argparse.Namespace) -> int:
        check_bench_arguments(args)
        check_run_arguments(args)
        with opened(target_from_args(args, slots_here=args.slots)) as nodes:
            return run(args, nodes)

    return wrapped


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hostfile", nargs="?", metavar="HOSTFILE",
                        help="DeepSpeed hostfile (default: this machine, --slots ranks)")
    parser.add_argument("--include", default="", metavar="SPEC", help="DeepSpeed --include filter")
    parser.add_argument("--exclude", default="", metavar="SPEC", help="DeepSpeed --exclude filter")
    parser.add_argument("--slots", type=int, default=1, metavar="N",
                        help="ranks on this machine when there is no hostfile (default 1)")
    parser.add_argument("--python", metavar="PATH", type=interpreter_path,
                        help=f"training env's interpreter, the same path on every node (default: {sys.executable})")
    parser.add_argument("--deadline", type=float, default=300.0, metavar="SECONDS",
                        help="the whole launch is killed after this long, hung ranks included (default 300)")
    parser.add_argument("--workdir", metavar="DIR",
                        help="where the workload scripts go on every node (default: a private per-user "
                             "directory under $TMPDIR or /tmp)")
    parser.add_argument("--shared-workdir", action="store_true",
                        help="--workdir is on a filesystem every node mounts: write the scripts there once, "
                             "from this machine, without SSH")
    parser.add_argument("--master-addr", metavar="ADDR", help="rendezvous address (default: DeepSpeed's choice)")
    parser.add_argument("--master-port", type=int, default=29500, metavar="PORT", help="rendezvous port")
    parser.add_argument("--launcher", default="pdsh", help="DeepSpeed multi-node launcher (default: pdsh)")
    parser.add_argument("--json", action="store_true", help="print the JSON document instead of tables")
    parser.add_argument("--save", metavar="FILE.json", help="write the JSON document there (and the plot beside it)")
    parser.add_argument("--log", metavar="FILE.json",
                        help="write every launch's whole output there, line by line with its node and rank")
    parser.add_argument("--facts", metavar="FILE", help="doctor JSON for the topology (default: survey the nodes)")
    parser.add_argument("--no-expect", action="store_true",
                        help="do not survey the nodes for the expected bandwidth")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="per-node deadline for the topology survey (default 30)")
    add_ssh_arguments(parser)


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    from clusterkit.workloads.scripts.nccl_format import OPS, TYPE_SIZES

    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of: {', '.join(OPS)}")
    parser.add_argument("--min-bytes", default="1K", metavar="SIZE", help="smallest message (K/M/G; default 1K)")
    parser.add_argument("--max-bytes", default="16M", metavar="SIZE", help="largest message (default 16M)")
    parser.add_argument("--step-factor", type=int, default=4, metavar="F", help="size multiplier (default 4)")
    parser.add_argument("--sizes", default="", metavar="LIST", help="exact sizes instead of a sweep (1M,64M)")
    parser.add_argument("--iters", type=int, default=10, help="timed operations per size (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed operations first (default 2)")
    parser.add_argument("--dtype", default="float32", choices=sorted(TYPE_SIZES))
    parser.add_argument("--no-check", action="store_true", help="skip the correctness check (#wrong N/A)")


def _search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="64M", metavar="SIZE",
                        help="largest all_reduce message per pair (default 64M): each pair measures 256K first "
                             "and shrinks this to what its rate lets finish within --pair-deadline")
    parser.add_argument("--pair-iters", type=int, default=5, metavar="N", help="timed all_reduces per pair")
    parser.add_argument("--slow-ratio", type=float, default=0.5, metavar="R",
                        help="a pair below R x the best pair's busbw is slow (default 0.5)")
    parser.add_argument("--pair-deadline", type=float, default=120.0, metavar="SECONDS",
                        help="deadline of one pair's run (default 120)")
    parser.add_argument("--write-hostfile", metavar="FILE",
                        help="write the hostfile without the slow or broken nodes there")


# --------------------------------------------------------------------------------------- commands


def _options(args: argparse.Namespace) -> Any:
    """The sweep the flags ask for (checked by :func:`check_bench_arguments` before)."""
    from clusterkit.workloads.collectives import CollectivesOptions
    from clusterkit.workloads.scripts.nccl_format import parse_size

    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    return CollectivesOptions(ops=ops, min_bytes=args.min_bytes, max_bytes=args.max_bytes,
                              step_factor=args.step_factor, sizes=sizes, iters=args.iters, warmup=args.warmup,
                              dtype=args.dtype, check=not args.no_check, baseline=args.baseline,
                              rounds=args.rounds, timeout_s=max(10.0, args.deadline - 15))


def run_collectives_command(args: argparse.Namespace, nodes: Nodes) -> int:
    from clusterkit.workloads import collectives

    console = Console(stderr=True)
    options = _options(args)
    ctx = make_context(args, nodes, console)
    facts = gather_facts(args, ctx, console)
    report = collectives.run_collectives(ctx, options, expectation(args, ctx, facts))
    findings = report.findings + report.run.diagnosis.findings
    slow = any(f.check_id == "collectives-below-expectation" and f.outcome.value == "fail" for f in report.findings)
    if args.find_slow and len(ctx.hosts) > 1 and (not report.run.ok or slow):
        report.search = _search(args, ctx, console)
        findings += collectives.search_findings(report.search)
    doc = report.to_json()
    findings += compare_and_save(args, bench_run("collectives", ctx.names, facts, findings, doc), console)
    doc["findings"] = [_finding_json(f) for f in findings]
    _save(args, report, doc, console)
    write_log(args, ctx)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        render_collectives(report, Console())
        show_search(report.search, console)
        show_findings(findings, report.run.diagnosis.tails, report.run.hosts, console, report.run.outcome.duration_s)
    return exit_code(findings)


def _finding_json(finding: Any) -> dict[str, Any]:
    from clusterkit.core.findings_report import finding_to_json

    return finding_to_json(finding)


def _save(args: argparse.Namespace, report: Any, doc: dict[str, Any], console: Console) -> None:
    if not args.save:
        return
    from clusterkit.workloads import collectives

    path = Path(args.save)
    written = collectives.save(report, path)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    console.print(f"saved: {', '.join(str(p) for p in written)}", style="dim", highlight=False)


def _search(args: argparse.Namespace, ctx: WorkloadContext, console: Console) -> Any:
    from clusterkit.workloads import collectives
    from clusterkit.workloads.scripts.nccl_format import parse_size
    from clusterkit.workloads.slownode import cleaned_hostfile

    size = parse_size(args.size)
    if len(ctx.hosts) < 2:
        raise UsageError("finding a slow node needs a hostfile with at least two hosts")
    search = collectives.search_slow(ctx, size, args.pair_iters, args.pair_deadline, args.slow_ratio)
    if args.write_hostfile:
        reasons = {n: f"{search.verdicts[n]}: {search.why(n)}" for n in search.excluded}
        text = cleaned_hostfile(Path(args.hostfile).read_text(encoding="utf-8"), reasons)
        Path(args.write_hostfile).write_text(text, encoding="utf-8")
        console.print(f"wrote {args.write_hostfile} without {', '.join(search.excluded) or 'any node'}",
                      highlight=False)
    return search


def run_find_slow_command(args: argparse.Namespace, nodes: Nodes) -> int:
    from clusterkit.workloads import collectives

    console = Console(stderr=True)
    ctx = make_context(args, nodes, console)
    started = time.monotonic()
    search = _search(args, ctx, console)
    findings = collectives.search_findings(search)
    write_log(args, ctx)
    doc = {"schema": "clusterkit.bench.find-slow/v1", "hosts": ctx.names,
           "slow_node_search": collectives.search_to_json(search),
           "findings": [_finding_json(f) for f in findings]}
    findings += compare_and_save(args, bench_run("find-slow", ctx.names, {}, findings, doc), console)
    doc["findings"] = [_finding_json(f) for f in findings]
    if args.save:
        Path(args.save).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        show_search(search, console)
        if not search.excluded and not search.slow_links:
            console.print("no node or link stands out from its peers", style="green")
        show_findings(findings, {}, ctx.names, console, time.monotonic() - started)
    return exit_code(findings)


def run_traffic_command(args: argparse.Namespace, nodes: Nodes) -> int:
    from clusterkit.commands.bench_traffic import run_traffic

    console = Console(stderr=True)
    ctx = make_context(args, nodes, console)
    try:
        return run_traffic(args, ctx, console)
    finally:
        write_log(args, ctx)
