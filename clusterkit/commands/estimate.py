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

from clusterkit.errors import ExitCode, UsageError


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
    parser.add_argument("--hostfile", metavar="H", help="DeepSpeed hostfile (nodes and GPUs per node)")
    parser.add_argument("--include", default="", metavar="SPEC", help="DeepSpeed --include filter")
    parser.add_argument("--exclude", default="", metavar="SPEC", help="DeepSpeed --exclude filter")
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


def _largest_layer_guess(total: int) -> int:
    # No layer size given: assume a decoder LLM whose embedding (vocab 32k x hidden) is the largest
    # layer, with hidden ~ sqrt(params / (12 x layers)) and ~32 layers: rough, and said so.
    hidden = int((total / (12 * 32)) ** 0.5)
    return max(1, 32000 * hidden)


def _model(args: argparse.Namespace) -> tuple[int, int, str, list[str]]:
    from clusterkit.dsconfig.hf_model import load_hf_config, parse_count

    notes: list[str] = []
    if args.hf_config:
        size = load_hf_config(args.hf_config)
        total, largest, source = size.total_params, size.largest_layer_params, f"{size.source}: {size.detail}"
    else:
        total, largest, source = parse_count(args.params), 0, "--params"
        if not args.largest_layer:
            largest = min(total, _largest_layer_guess(total))
            notes.append(f"largest layer guessed as {largest:,} parameters (a 32k-vocab embedding); pass "
                         "--largest-layer for ZeRO-3 numbers you can rely on")
    if args.largest_layer:
        largest = parse_count(args.largest_layer, "--largest-layer")
    if largest > total:
        raise UsageError(f"--largest-layer {largest:,} is larger than the model ({total:,})")
    return total, largest, source, notes


def gather(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Model size, cluster shape and capacity from the arguments; returns the plan and its context."""
    from clusterkit.dsconfig.estimate import Capacity, plan_memory
    from clusterkit.dsconfig.resources import (
        ClusterResources,
        load_facts_file,
        local_resources,
        min_known,
        resources_from_facts,
    )
    from clusterkit.dsconfig.topology import topology_from_counts, topology_from_hostfile
    from clusterkit.facts import Unavailable

    if not 0 <= args.headroom < 1:
        raise UsageError("--headroom must be in [0, 1)")
    if (args.include or args.exclude) and not args.hostfile:
        raise UsageError("--include/--exclude need --hostfile")
    if args.hostfile and (args.nodes or args.gpus_per_node):
        raise UsageError("give either --hostfile or --nodes/--gpus-per-node")
    total, largest, source, notes = _model(args)
    resources: ClusterResources = (resources_from_facts(load_facts_file(args.facts), f"--facts {args.facts}")
                                   if args.facts else local_resources())
    if args.hostfile:
        topology = topology_from_hostfile(args.hostfile, args.include, args.exclude)
    elif args.nodes or args.gpus_per_node:
        topology = topology_from_counts(nodes=args.nodes or 1, gpus_per_node=args.gpus_per_node or 1)
    else:
        from clusterkit.dsconfig.topology import Topology

        counts = {h: len(n.gpus) for h, n in resources.nodes.items() if not isinstance(n.gpus, Unavailable)}
        if counts and all(counts.values()):
            topology = Topology(tuple(counts), tuple(counts.values()), resources.source)
        else:
            topology = topology_from_counts(nodes=1, gpus_per_node=1)
            notes.append("no hostfile and no GPUs found: estimating for 1 node x 1 GPU")
    per_node = topology.gpus_per_node or max(topology.gpus_per_host)
    if topology.gpus_per_node is None:
        notes.append(f"nodes run different GPU counts; estimating with {per_node} per node")

    only = next(iter(resources.nodes.values())) if len(resources.nodes) == 1 else None
    mem: dict[str, int | None] = {}
    gpu_sizes: list[Any] = []
    for host in topology.hosts:
        node = resources.node(host) or only
        if node is None:
            mem[host] = None
            continue
        if node is only and host != node.host:
            notes.append(f"{host}: using {node.host}'s facts ({resources.source})")
        available = node.mem_available_bytes
        mem[host] = None if isinstance(available, Unavailable) else available
        if not isinstance(node.gpus, Unavailable):
            gpu_sizes += [g.memory_total_bytes for g in node.gpus]
    gpu_bytes = int(args.gpu_memory * 2**30) if args.gpu_memory else min_known(gpu_sizes)
    capacity = Capacity(gpu_bytes, mem, args.headroom)
    plan = plan_memory(total, largest, topology.nodes, per_node, capacity, args.buffer_factor, tuple(notes))
    return plan, {"model_source": source, "topology": topology, "resources": resources.source}


def run(args: argparse.Namespace) -> int:
    plan, context = gather(args)
    if args.json:
        print(json.dumps(plan_to_json(plan, context), indent=2))
    else:
        print(render_text(plan, context, color=sys.stdout.isatty()), end="")
    nothing_fits = plan.capacity.gpu_bytes is not None and plan.recommended is None
    return int(ExitCode.PROBLEMS if nothing_fits else ExitCode.OK)


def render_text(plan: Any, context: dict[str, Any], color: bool = False) -> str:
    """The estimate table, the recommendation and the warnings as text."""
    from clusterkit.dsconfig.estimate import gib

    cap = plan.capacity
    lines = [f"model: {plan.total_params:,} parameters, largest layer {plan.largest_layer_params:,} "
             f"({context['model_source']})",
             f"cluster: {context['topology'].describe()}; GPU {gib(cap.gpu_bytes)} "
             f"({gib(cap.usable_gpu_bytes)} usable after {cap.gpu_headroom:.0%} headroom); "
             f"MemAvailable: " + ", ".join(f"{h} {gib(m)}" for h, m in cap.node_mem_available.items())
             + f" ({context['resources']})", ""]
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


def plan_to_json(plan: Any, context: dict[str, Any]) -> dict[str, Any]:
    """The ``clusterkit.estimate/v1`` document (bytes as integers)."""
    topology = context["topology"]
    return {
        "schema": "clusterkit.estimate/v1",
        "model": {"total_params": plan.total_params, "largest_layer_params": plan.largest_layer_params,
                  "source": context["model_source"]},
        "cluster": {"source": topology.source, "hosts": list(topology.hosts),
                    "gpus_per_host": list(topology.gpus_per_host), "num_nodes": plan.num_nodes,
                    "num_gpus_per_node": plan.num_gpus_per_node, "resources": context["resources"]},
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
