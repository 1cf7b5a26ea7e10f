"""``clusterkit estimate``: GPU and CPU memory for ZeRO 0-3 with and without offload, and what fits.

The model is a parameter count (``--params 7B``) or a HF ``config.json`` read offline; the cluster is
a hostfile or ``--nodes``/``--gpus-per-node``; GPU memory and each node's MemAvailable come from a
doctor facts file (``--facts``) or this machine. Exit 1 when no strategy fits, 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from clusterkit.commands.common import add_hostfile_arguments
from clusterkit.dsconfig.estimate import gib
from clusterkit.dsconfig.sizing import Sizing, SizingRequest, size_up
from clusterkit.errors import ExitCode


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "estimate", help="memory per GPU and per node for ZeRO 0-3 and offload, and the cheapest that fits",
        description="Estimate model-state memory like DeepSpeed's estimate_zero2/zero3_model_states_mem_needs "
                    "(ZeRO-0/1 and NVMe rows are clusterkit's own), set it against the GPUs' memory and "
                    "each node's free RAM, and recommend the first strategy that fits in the order "
                    "DeepSpeed's docs give: ZeRO-0/1/2, ZeRO-2 + optimizer offload, ZeRO-3, ZeRO-3 + "
                    "optimizer offload, ZeRO-3 + param and optimizer offload, NVMe.",
        epilog="example: clusterkit estimate --hf-config llama/config.json --hostfile hostfile "
               "--facts doctor.json")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--params", metavar="N", help="total parameters (7B, 350M, 6.7e9)")
    model.add_argument("--hf-config", metavar="CONFIG_JSON", help="HF config.json to count parameters from")
    parser.add_argument("--largest-layer", metavar="N", help="parameters of the largest layer (default: "
                        "from --hf-config; with --params, the embedding of a typical LLM is guessed)")
    add_hostfile_arguments(parser, positional=False)
    parser.add_argument("--nodes", type=int, metavar="N", help="number of nodes (without a hostfile)")
    parser.add_argument("--gpus-per-node", type=int, metavar="G", help="GPUs per node (without a hostfile)")
    parser.add_argument("--facts", metavar="FILE", help="doctor JSON (or one node's facts): GPU memory and "
                        "MemAvailable per node; default: this machine")
    parser.add_argument("--gpu-memory", type=float, metavar="GIB", help="GPU memory in GiB (overrides facts)")
    parser.add_argument("--headroom", type=float, default=0.2, metavar="FRACTION",
                        help="GPU memory kept free for activations, CUDA context and NCCL (default 0.2)")
    parser.add_argument("--buffer-factor", type=float, default=1.5, metavar="X",
                        help="DeepSpeed's additional_buffer_factor (default 1.5)")
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.set_defaults(run=run)


def request_from(args: argparse.Namespace) -> SizingRequest:
    return SizingRequest(params=args.params, hf_config=args.hf_config, largest_layer=args.largest_layer,
                         hostfile=args.hostfile, include=args.include, exclude=args.exclude, nodes=args.nodes,
                         gpus_per_node=args.gpus_per_node, facts=args.facts, gpu_memory_gib=args.gpu_memory,
                         headroom=args.headroom, buffer_factor=args.buffer_factor)


def run(args: argparse.Namespace) -> int:
    sizing = size_up(request_from(args))
    if args.json:
        print(json.dumps(sizing_to_json(sizing), indent=2))
    else:
        print(render_text(sizing, color=sys.stdout.isatty()), end="")
    nothing_fits = sizing.plan.capacity.gpu_bytes is not None and sizing.plan.recommended is None
    return int(ExitCode.PROBLEMS if nothing_fits else ExitCode.OK)


def render_text(sizing: Sizing, color: bool = False) -> str:
    """The estimate table, the recommendation and the warnings as text."""
    plan = sizing.plan
    cap = plan.capacity
    lines = [f"model: {plan.total_params:,} parameters, largest layer {plan.largest_layer_params:,} "
             f"({sizing.model_source})",
             f"cluster: {sizing.topology.describe()}; GPU {gib(cap.gpu_bytes)} "
             f"({gib(cap.usable_gpu_bytes)} usable after {cap.gpu_headroom:.0%} headroom); "
             f"MemAvailable: " + ", ".join(f"{h} {gib(m)}" for h, m in cap.node_mem_available.items())
             + f" ({sizing.resources_source})", ""]
    width = max(len(v.estimate.strategy.label) for v in plan.verdicts)
    header = f"{'strategy':<{width}} {'per GPU':>11} {'CPU/node':>11} {'NVMe/node':>11}  fits  formula"
    lines += [header, "-" * len(header)]
    for v in plan.verdicts:
        e = v.estimate
        fits = {True: "yes", False: "no", None: "?"}[v.fits]
        mark = " <-" if v is plan.recommended else ""
        lines.append(f"{e.strategy.label:<{width}} {gib(e.gpu_bytes):>11} {gib(e.cpu_bytes):>11} "
                     f"{gib(e.nvme_bytes) if e.nvme_bytes else '-':>11}  {fits:<4}  {e.strategy.formula}{mark}")
    lines.append("")
    if plan.recommended is not None:
        s = plan.recommended.estimate.strategy
        lines.append(f"recommendation: {s.label} (zero_optimization.stage {s.stage}"
                     + (f", offload_optimizer.device {s.offload_optimizer}" if s.offload_optimizer != "none"
                        else "")
                     + (f", offload_param.device {s.offload_param}" if s.offload_param != "none" else "") + ")")
    lines += [f"warning: {w}" for w in plan.warnings]
    lines += [f"note: {n}" for n in plan.notes]
    lines.append("note: model states only; activations grow with batch size and sequence length")
    text = "\n".join(lines) + "\n"
    if color:
        text = text.replace("warning:", "\x1b[33mwarning:\x1b[0m").replace(
            "recommendation:", "\x1b[1;32mrecommendation:\x1b[0m")
    return text


def sizing_to_json(sizing: Sizing) -> dict[str, Any]:
    """The ``clusterkit.estimate/v1`` document (bytes as integers)."""
    plan, topology = sizing.plan, sizing.topology
    return {
        "schema": "clusterkit.estimate/v1",
        "model": {"total_params": plan.total_params, "largest_layer_params": plan.largest_layer_params,
                  "source": sizing.model_source},
        "cluster": {"source": topology.source, "hosts": list(topology.hosts),
                    "gpus_per_host": list(topology.gpus_per_host), "num_nodes": plan.num_nodes,
                    "num_gpus_per_node": plan.num_gpus_per_node, "resources": sizing.resources_source},
        "capacity": dataclasses.asdict(plan.capacity),
        "estimates": [{**dataclasses.asdict(v.estimate.strategy), "label": v.estimate.strategy.label,
                       "gpu_bytes": v.estimate.gpu_bytes, "cpu_bytes_per_node": v.estimate.cpu_bytes,
                       "nvme_bytes_per_node": v.estimate.nvme_bytes, "gpu_fits": v.gpu_fits,
                       "cpu_fits": v.cpu_fits, "fits": v.fits, "cpu_short_hosts": list(v.cpu_short_hosts)}
                      for v in plan.verdicts],
        "recommendation": plan.recommended.estimate.strategy.key if plan.recommended else None,
        "warnings": list(plan.warnings),
        "notes": list(plan.notes),
    }
