"""``clusterkit bench collectives|find-slow|traffic|gpu|zero``: prove the cluster trains, and how fast.

Every workload runs inside the training env through DeepSpeed's own launcher across the hostfile
(NCCL on GPUs, gloo on CPU), under a deadline, with live progress per node. Failures come back as
findings (cause, node and rank, fix) with each failing rank's log tail. Without a hostfile the
workload runs on this machine (``--slots`` ranks). Every workload runs in a Slurm allocation as
doctor does (inside one without a HOSTFILE, or ``--slurm``): started by srun, as ``clusterkit launch``
starts a job there (:mod:`clusterkit.workloads.slurm`).
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
from rich.text import Text

from clusterkit.commands.bench_inputs import check_bench_arguments
from clusterkit.commands.common import add_ssh_arguments, interpreter_path, ssh_settings
from clusterkit.commands.slurm import add_slurm_arguments, slurm_allocation, use_slurm
from clusterkit.errors import ExitCode, UsageError
from clusterkit.facts import Maybe, NodeFacts, Unavailable
from clusterkit.inventory import ActiveHost, load_hostfile, select_hosts

WORKLOADS = ("collectives", "gpu", "zero")


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
    coll.set_defaults(run=run_collectives_command)

    slow = commands.add_parser("find-slow", help="name the slow or broken node (or link) with two-node rings, "
                                                 "and write a hostfile without it")
    _common(slow)
    _search_arguments(slow)
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
        workload.set_defaults(run=_in_allocation(workload.get_default("run")))


def _in_allocation(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``run`` with its flags checked first, inside the Slurm allocation when the command goes through
    Slurm (``args.allocation``)."""

    def wrapped(args: argparse.Namespace) -> int:
        check_bench_arguments(args)
        if not use_slurm(args, args.hostfile):
            return run(args)
        with slurm_allocation(args) as alloc:
            args.allocation = alloc
            return run(args)

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


# ----------------------------------------------------------------------------------------- set-up


def hosts_and_hostfile(args: argparse.Namespace) -> tuple[list[ActiveHost], str]:
    from clusterkit.inventory import HostEntry
    from clusterkit.workloads.session import local_hostfile

    if args.hostfile:
        hosts = select_hosts(load_hostfile(args.hostfile), args.include, args.exclude)
        return hosts, str(Path(args.hostfile).resolve())
    if args.include or args.exclude:
        raise UsageError("--include/--exclude need a HOSTFILE")
    if args.slots < 1:
        raise UsageError(f"--slots {args.slots}: need at least one rank")
    entry = HostEntry("localhost", args.slots, 1)
    return [ActiveHost("localhost", tuple(range(args.slots)), entry)], local_hostfile(args.slots)


def make_context(args: argparse.Namespace, console: Console) -> Any:
    from clusterkit.workloads.session import WorkloadContext

    if getattr(args, "allocation", None) is not None:
        return _slurm_context(args, console)
    hosts, hostfile = hosts_and_hostfile(args)
    python = args.python or sys.executable
    whole = select_hosts(load_hostfile(args.hostfile)) if args.hostfile else None
    return WorkloadContext(hosts=hosts, hostfile=hostfile, python=python, hostfile_hosts=whole,
                           settings=ssh_settings(args),
                           console=console, workdir=args.workdir,
                           shared_workdir=args.shared_workdir, master_addr=args.master_addr,
                           master_port=args.master_port, launcher=args.launcher, deadline_s=args.deadline)


def _slurm_context(args: argparse.Namespace, console: Console) -> Any:
    import os

    from clusterkit.cluster.slurm import allocation_hostfile
    from clusterkit.launchsite import deepspeed_env_values
    from clusterkit.slurmlaunch import runner_exports
    from clusterkit.workloads.slurm import SlurmWorkloadContext

    alloc = args.allocation
    nodes = allocation_hostfile(alloc)
    hosts = select_hosts(nodes, args.include, args.exclude)
    cwd = str(Path.cwd())
    cpus = min((alloc.job.cpus_per_node.get(h.name, 0) for h in hosts), default=0) or None
    return SlurmWorkloadContext(hosts=hosts, hostfile=nodes.path, python=args.python or sys.executable,
                                hostfile_hosts=select_hosts(nodes), settings=ssh_settings(args), console=console,
                                workdir=args.workdir, shared_workdir=args.shared_workdir,
                                master_addr=args.master_addr, master_port=args.master_port, launcher="srun",
                                deadline_s=args.deadline, cwd=cwd, alloc=alloc, cpus_per_task=cpus,
                                exports=runner_exports(cwd, os.environ.get("PYTHONPATH"), deepspeed_env_values(cwd)))


def gather_facts(args: argparse.Namespace, ctx: Any) -> dict[str, Maybe[NodeFacts]]:
    """Each node's facts for the expectations: --facts, or a survey (this machine in-process)."""
    if args.no_expect:
        return {}
    if args.facts:
        from clusterkit.dsconfig.resources import load_facts_file

        return load_facts_file(args.facts)
    if ctx.local:
        from clusterkit.collect.node import CollectOptions, collect_node

        options = CollectOptions(section_timeout_s=args.timeout, python=ctx.python)
        with ctx.console.status("Collecting this machine's facts…", spinner="dots"):
            return {ctx.names[0]: collect_node(options)}
    from clusterkit.survey import SurveyOptions, survey_cluster

    if getattr(args, "allocation", None) is not None:
        from clusterkit.survey_slurm import survey_over_slurm

        facts, _ = survey_over_slurm(ctx.hosts, args.allocation, SurveyOptions(python=ctx.python,
                                     timeout_s=args.timeout, probes=False), ctx.console)
        return facts
    facts, _ = survey_cluster(ctx.hosts, ctx.settings, SurveyOptions(python=ctx.python, timeout_s=args.timeout,
                                                                     probes=False), ctx.console)
    return facts


def backend_of(facts: dict[str, Maybe[NodeFacts]]) -> str:
    """nccl when the training env sees CUDA on the nodes, else gloo (what DeepSpeed would pick)."""
    for node in facts.values():
        if isinstance(node, Unavailable):
            continue
        env = node.python_env
        if not isinstance(env, Unavailable) and env.torch_cuda_available is True:
            return "nccl"
    return "gloo"


def expectation_for(ctx: Any, facts: dict[str, Maybe[NodeFacts]], args: argparse.Namespace,
                    hosts: list[ActiveHost] | None = None) -> Any:
    from clusterkit.workloads.expect import Expectation, expected_busbw

    if args.no_expect:
        return None
    if not facts:
        return Expectation(None, reason="no facts")
    return expected_busbw(facts, ctx.ranks_per_node(hosts), backend_of(facts))


def emit(doc: dict[str, Any], args: argparse.Namespace, console: Console) -> None:
    if args.json:
        print(json.dumps(doc, indent=2))


def show_findings(findings: list[Any], tails: dict[str, list[str]], hosts: list[str], console: Console,
                  duration_s: float) -> None:
    """Findings as the doctor shows them, then the log tail of every failing node and rank."""
    from clusterkit.report import DoctorReport, render_table

    report = DoctorReport(hosts=hosts, facts={}, findings=findings, duration_s=duration_s)
    render_table(report, console)
    for where, lines in tails.items():
        console.print(Text(f"log tail: {where}", style="bold"))
        for line in lines:
            console.print(Text(f"  {line}", style="dim"), soft_wrap=True)


def exit_code(findings: list[Any]) -> int:
    return int(ExitCode.PROBLEMS if any(f.is_error for f in findings) else ExitCode.OK)


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


def write_log(args: argparse.Namespace, ctx: Any) -> None:
    """``--log``: every launch of the command, line by line."""
    if getattr(args, "log", None):
        from clusterkit.workloads.session import write_log as write

        write(args.log, ctx.runs)


def run_collectives_command(args: argparse.Namespace) -> int:
    from clusterkit.workloads import collectives

    console = Console(stderr=True)
    options = _options(args)
    ctx = make_context(args, console)
    facts = gather_facts(args, ctx)
    report = collectives.run_collectives(ctx, options, expectation_for(ctx, facts, args))
    findings = report.findings + report.run.diagnosis.findings
    slow = any(f.check_id == "collectives-below-expectation" and f.outcome.value == "fail" for f in report.findings)
    if args.find_slow and len(ctx.hosts) > 1 and (not report.run.ok or slow):
        report.search = _search(args, ctx, console)
        findings += collectives.search_findings(report.search)
    doc = report.to_json()
    doc["findings"] = [_finding_json(f) for f in findings]
    _save(args, report, doc, console)
    write_log(args, ctx)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        collectives.render(report, Console())
        _show_search(report.search, console)
        show_findings(findings, report.run.diagnosis.tails, report.run.hosts, console, report.run.outcome.duration_s)
    return exit_code(findings)


def _finding_json(finding: Any) -> dict[str, Any]:
    from clusterkit.report import finding_to_json

    return finding_to_json(finding)


def _save(args: argparse.Namespace, report: Any, doc: dict[str, Any], console: Console) -> None:
    if not args.save:
        return
    from clusterkit.workloads import collectives

    path = Path(args.save)
    written = collectives.save(report, path)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    console.print(f"saved: {', '.join(str(p) for p in written)}", style="dim", highlight=False)


def _search(args: argparse.Namespace, ctx: Any, console: Console) -> Any:
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


def _show_search(search: Any, console: Console) -> None:
    if search is None:
        return
    console.print(Text("slow-node search", style="bold underline"))
    for line in search.evidence():
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)


def run_find_slow_command(args: argparse.Namespace) -> int:
    from clusterkit.workloads import collectives

    console = Console(stderr=True)
    ctx = make_context(args, console)
    started = time.monotonic()
    search = _search(args, ctx, console)
    findings = collectives.search_findings(search)
    write_log(args, ctx)
    doc = {"schema": "clusterkit.bench.find-slow/v1", "hosts": ctx.names,
           "slow_node_search": collectives.search_to_json(search),
           "findings": [_finding_json(f) for f in findings]}
    if args.save:
        Path(args.save).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _show_search(search, console)
        if not search.excluded and not search.slow_links:
            console.print("no node or link stands out from its peers", style="green")
        show_findings(findings, {}, ctx.names, console, time.monotonic() - started)
    return exit_code(findings)


def run_traffic_command(args: argparse.Namespace) -> int:
    from clusterkit.commands.bench_traffic import run_traffic

    ctx = make_context(args, Console(stderr=True))
    try:
        return run_traffic(args, ctx)
    finally:
        write_log(args, ctx)


# ------------------------------------------------------------------------------------ doctor flag


def add_doctor_flag(parser: argparse.ArgumentParser) -> None:
    """``clusterkit doctor --workloads [LIST]``: run workloads after the checks."""
    parser.add_argument("--workloads", nargs="?", const=",".join(WORKLOADS), default="", metavar="LIST",
                        help=f"after the checks, run workloads across the nodes ({', '.join(WORKLOADS)}; "
                             "default all): their failures join the findings")


def workloads_for_doctor(args: argparse.Namespace, facts: dict[str, Maybe[NodeFacts]]) -> list[Any]:
    """Run the workloads ``--workloads`` names (after the doctor's checks); their findings."""
    from clusterkit.commands import bench_gpu_zero
    from clusterkit.workloads import collectives

    wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in WORKLOADS]
    if unknown:
        raise UsageError(f"--workloads: unknown {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    console = Console(stderr=True)
    for name, default in (("slots", 1), ("workdir", None), ("shared_workdir", False), ("master_addr", None),
                          ("master_port", 29500), ("launcher", "pdsh"), ("deadline", 300.0), ("no_expect", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    ctx = make_context(args, console)
    findings: list[Any] = []
    for name in wanted:
        console.print(Text(f"workload: {name}", style="bold"))
        if name == "collectives":
            report = collectives.run_collectives(ctx, collectives.CollectivesOptions(max_bytes="4M"),
                                                 expectation_for(ctx, facts, args))
            findings += report.findings + report.run.diagnosis.findings
        elif name == "gpu":
            findings += bench_gpu_zero.gpu_findings(ctx, facts)
        else:
            findings += bench_gpu_zero.zero_findings(ctx)
    return findings
