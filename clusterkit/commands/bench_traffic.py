"""``clusterkit bench traffic``: measure the job's own collectives at its bucket sizes, then model a step.

See :mod:`clusterkit.workloads.traffic` for the model; this module measures and prints the arithmetic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from clusterkit.commands.bench_common import exit_code, show_findings
from clusterkit.errors import UsageError
from clusterkit.workloads import traffic
from clusterkit.workloads.collectives import CollectivesOptions, run_collectives
from clusterkit.workloads.scripts.nccl_format import parse_size, size_sweep
from clusterkit.workloads.session import WorkloadContext

JSON_SCHEMA = "clusterkit.bench.traffic/v1"
SWEEP_FROM = 64 * 1024


def model_size(args: argparse.Namespace) -> tuple[int, int | None]:
    """(parameters, hidden size if known) from --params or --hf-config."""
    from clusterkit.dsconfig.hf_model import load_hf_config, parse_count

    if args.params:
        return parse_count(args.params), None
    size = load_hf_config(args.hf_config)
    return size.total_params, size.hidden_size


def measured_sizes(shape: traffic.JobShape, max_bytes: int) -> tuple[list[str], list[int]]:
    """The collectives to run and the sizes: every bucket (capped) plus a sweep up to the largest."""
    buckets = shape.bucket_bytes()
    ops = list(buckets)
    wanted = {min(size, max_bytes) for sizes in buckets.values() for size in sizes}
    top = max(wanted)
    if top > SWEEP_FROM:
        wanted |= set(size_sweep(SWEEP_FROM, top, 4))
    return ops, sorted(wanted)


def run_traffic(args: argparse.Namespace, ctx: WorkloadContext, console: Console) -> int:
    config: dict[str, Any] = {}
    if args.deepspeed_config:
        from clusterkit.dsconfig.load import load_ds_config

        config = load_ds_config(args.deepspeed_config).data
    try:
        max_bytes = parse_size(args.max_bytes)
    except ValueError as exc:
        raise UsageError(f"--max-bytes: {exc}") from None
    shape = traffic.job_shape(config, *model_size(args))
    ops, sizes = measured_sizes(shape, max_bytes)
    dtype = "bfloat16" if shape.dtype_bytes == 2 else "float32"
    options = CollectivesOptions(ops=ops, sizes=sizes, iters=args.iters, warmup=2, dtype=dtype,
                                 timeout_s=max(10.0, args.deadline - 15))
    report = run_collectives(ctx, options, None)
    findings = report.findings + report.run.diagnosis.findings
    node_curves: dict[str, list[traffic.Point]] = {}
    node_note = ""
    if shape.hpz_partition_size > 1:
        first = ctx.hosts[0]
        if len(first.slots) > 1:
            inside = run_collectives(ctx, CollectivesOptions(ops=["all_gather"], sizes=sizes, iters=args.iters,
                                                             dtype=dtype), None, hosts=[first])
            findings += inside.run.diagnosis.findings
            if inside.result:
                node_curves = traffic.curves_from_report(inside.result)
                node_note = f"hpZ's intra-node all_gather measured on {first.name}'s {len(first.slots)} ranks"
        else:
            node_note = "hpZ: one rank per node, no intra-node all_gather to measure"
    doc: dict[str, Any] = {"schema": JSON_SCHEMA, "hosts": ctx.names, "params": shape.params,
                           "dtype_bytes": shape.dtype_bytes, "measured": report.result, "findings": []}
    if report.result is not None:
        curves = traffic.curves_from_report(report.result)
        stages = traffic.step_traffic(shape, curves, node_curves)
        advice = traffic.bucket_advice(shape, curves)
        favoured = traffic.favoured_stage(stages)
        doc["stages"] = [{"name": s.name, "seconds": s.seconds, "notes": s.notes,
                          "terms": [{"phase": t.phase, "op": t.op, "total_bytes": t.total_bytes,
                                     "bucket_bytes": t.bucket_bytes, "seconds": t.seconds, "scope": t.scope,
                                     "arithmetic": t.arithmetic} for t in s.terms]} for s in stages]
        doc["buckets"] = [a.message for a in advice]
        doc["favoured"] = favoured
        doc["notes"] = list(shape.notes) + ([node_note] if node_note else [])
        if not args.json:
            _print(console, shape, stages, advice, favoured, doc["notes"])
    from clusterkit.core.findings_report import finding_to_json

    doc["findings"] = [finding_to_json(f) for f in findings]
    if args.save:
        Path(args.save).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(doc, indent=2))
    elif findings and any(f.outcome.value == "fail" for f in findings):
        show_findings(findings, report.run.diagnosis.tails, ctx.names, console, report.run.outcome.duration_s)
    return exit_code(findings)


def _print(console: Console, shape: traffic.JobShape, stages: list[traffic.StageTraffic],
           advice: list[traffic.BucketAdvice], favoured: str, notes: list[str]) -> None:
    out = Console()
    out.print(Text(f"communication per step: {shape.params:.3g} parameters x {shape.dtype_bytes} B", style="bold"))
    for stage in stages:
        total = f"{stage.seconds * 1e3:.4g} ms" if stage.seconds is not None else "not all measured"
        out.print(Text(f"{stage.name}: {total}", style="bold"))
        for term in stage.terms:
            out.print(f"  {term.arithmetic}", highlight=False, markup=False, soft_wrap=True)
    out.print(Text(favoured, style="green"), soft_wrap=True)
    for item in advice:
        out.print(f"bucket: {item.message}", highlight=False, markup=False, soft_wrap=True)
    for note in notes:
        out.print(f"note: {note}", style="dim", highlight=False, markup=False, soft_wrap=True)
