"""``clusterkit bench gpu`` and ``clusterkit bench zero`` (``doctor --workloads`` runs the same workloads
through :mod:`clusterkit.workloads.checkup`)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from clusterkit.cluster import Nodes
from clusterkit.commands.bench_common import (
    bench_run,
    exit_code,
    gather_facts,
    make_context,
    show_findings,
    write_log,
)
from clusterkit.commands.runs import add_run_arguments, compare_and_save
from clusterkit.core.findings_report import finding_to_json
from clusterkit.workloads import gpu_health, zero_suite
from clusterkit.workloads.checkup import gpu_run


def register(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    gpu = commands.add_parser("gpu", help="every GPU at once: memory bandwidth, bf16/fp16 matmul, pinned copies; "
                                          "against the datasheet and against the other GPUs")
    common(gpu)
    gpu.add_argument("--iters", type=int, default=10)
    gpu.add_argument("--mem-mib", type=int, default=0, metavar="MIB",
                     help="device copy size for the memory bandwidth (default 1024 on GPU)")
    gpu.add_argument("--matmul-n", type=int, default=0, metavar="N", help="matrix size (default 8192 on GPU)")
    gpu.add_argument("--allow-cpu", action="store_true",
                     help="without a GPU, measure the CPU instead (exercises the path; no datasheet); without "
                          "it, a node with no GPU is a failure (exit 1)")
    add_run_arguments(gpu)
    gpu.set_defaults(run=run_gpu_command)

    zero = commands.add_parser("zero", help="ZeRO 0, 1, 2, 3 and 3 + CPU offload on a tiny model: losses agree, "
                                            "checkpoints reload, zero_to_fp32 and the 16-bit save match")
    common(zero)
    zero.add_argument("--stages", default=",".join(zero_suite.ALL_STAGES),
                      help="comma-separated of 0,1,2,3,3o (3o: ZeRO-3 with CPU offload)")
    zero.add_argument("--steps", type=int, default=3)
    zero.add_argument("--ops-cache", default="auto", metavar="DIR",
                      help="node-local TORCH_EXTENSIONS_DIR for DeepSpeed's JIT ops ({tmp}, {uid}, ~ expanded on "
                           "each node; auto: the env's own if set, else {tmp}/clusterkit-{uid}/torch-extensions)")
    zero.add_argument("--no-build", action="store_true", help="skip the up-front build of the ops")
    zero.add_argument("--build-deadline", type=float, default=900.0, metavar="SECONDS",
                      help="deadline of the ops build (default 900: a first build compiles C++)")
    zero.set_defaults(run=run_zero_command)


# --------------------------------------------------------------------------------------------- gpu


def run_gpu_command(args: argparse.Namespace, nodes: Nodes) -> int:
    console = Console(stderr=True)
    ctx = make_context(args, nodes, console)
    facts = gather_facts(args, ctx, console)
    run, health = gpu_run(ctx, args.iters, args.allow_cpu, args.mem_mib, args.matmul_n)
    write_log(args, ctx)
    on_cpu = any(r.device.get("kind") == "cpu" for r in health.readings)
    # CPU ranks of one machine share its cores: their "peers" differ by scheduling, not by health.
    findings = gpu_health.judge(health, facts, compare_peers=not on_cpu, require_gpu=True) + run.diagnosis.findings
    doc = {"schema": "clusterkit.bench.gpu/v1", "hosts": ctx.names, "command": run.command,
           "duration_s": round(run.outcome.duration_s, 2),
           "readings": [{"host": r.host, "rank": r.rank, "device": r.device, "values": r.values, "seconds": r.seconds}
                        for r in health.readings],
           "skipped": health.skipped, "findings": [finding_to_json(f) for f in findings],
           "log_tails": run.diagnosis.tails}
    findings += compare_and_save(args, bench_run("gpu", ctx.names, facts, findings, doc), console)
    doc["findings"] = [finding_to_json(f) for f in findings]
    if args.save:
        Path(args.save).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(doc, indent=2))
        return exit_code(findings)
    if health.readings:
        table = Table(title="GPU health (share of datasheet or PCIe link)", title_justify="left")
        for header in ["node", "device", *gpu_health.metric_headers()]:
            table.add_column(header)
        for row in gpu_health.table_rows(health, facts):
            table.add_row(*row)
        Console().print(table)
    elif health.skipped:
        console.print(Text("nothing measured: no node's training env sees a GPU (--allow-cpu measures the CPU "
                           "instead)", style="bold red"), soft_wrap=True)
    show_findings(findings, run.diagnosis.tails, ctx.names, console, run.outcome.duration_s)
    return exit_code(findings)


# -------------------------------------------------------------------------------------------- zero


def run_zero_command(args: argparse.Namespace, nodes: Nodes) -> int:
    from clusterkit.errors import UsageError

    console = Console(stderr=True)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in zero_suite.ALL_STAGES]
    if unknown or not stages:
        raise UsageError(f"--stages: unknown {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(zero_suite.ALL_STAGES)}")
    ctx = make_context(args, nodes, console)
    options = zero_suite.ZeroOptions(stages=stages, steps=args.steps, ops_cache=args.ops_cache,
                                     build_deadline_s=args.build_deadline, timeout_s=max(10.0, args.deadline - 15))
    started = time.monotonic()
    report = zero_suite.run_zero(ctx, options, build=not args.no_build)
    write_log(args, ctx)
    findings = report.findings + [f for run in report.runs for f in run.diagnosis.findings]
    tails = {k: v for run in report.runs for k, v in run.diagnosis.tails.items()}
    doc = {"schema": "clusterkit.bench.zero/v1", "hosts": ctx.names,
           "commands": [run.command for run in report.runs], "builds": report.builds, "result": report.result,
           "timings": report.timings(), "findings": [finding_to_json(f) for f in findings], "log_tails": tails}
    if args.save:
        Path(args.save).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(doc, indent=2))
        return exit_code(findings)
    out = Console()
    if report.result is not None:
        table = Table(title=f"ZeRO smoke suite: {report.result['world_size']} ranks, {report.result['precision']}",
                      title_justify="left")
        for header in ("stage", "losses", "vs reference", "checkpoint", "zero_to_fp32", "16-bit save", "seconds"):
            table.add_column(header)
        agreement = report.result.get("loss_agreement") or {}
        for stage in report.result["stages"]:
            table.add_row(*_stage_cells(stage, agreement))
        out.print(table)
        out.print(Text(f"loss tolerance {agreement.get('tolerance')} (relative, against ZeRO-"
                       f"{agreement.get('reference')}); timings {report.timings()}", style="dim"), soft_wrap=True)
    show_findings(findings, tails, ctx.names, console, time.monotonic() - started)
    return exit_code(findings)


def _stage_cells(stage: dict[str, Any], agreement: dict[str, Any]) -> list[str]:
    if "error" in stage:
        return [stage["name"], f"FAILED: {stage['error']}", "", "", "", "", ""]
    diff = (agreement.get("stages") or {}).get(stage["stage"])
    checkpoint = stage.get("checkpoint") or {}

    def diff_cell(part: dict[str, Any] | None) -> str:
        return "-" if not part else f"max |diff| {part['max_abs_diff']:.1e}"

    seconds = stage.get("seconds", {})
    return [stage["name"], ", ".join(f"{v:.5f}" for v in stage.get("losses", [])),
            "-" if diff is None else f"{diff:.1e}", diff_cell(checkpoint), diff_cell(stage.get("zero_to_fp32")),
            diff_cell(stage.get("save_16bit")),
            f"{seconds.get('initialize', 0):.1f} init, {sum(stage.get('step_seconds', [])):.2f} train"]
