"""What ``clusterkit estimate`` works out, as a library: the model's size, the cluster's shape and
capacity, and the memory plan for ZeRO 0-3 with and without offload."""

from __future__ import annotations

from dataclasses import dataclass

from clusterkit.dsconfig.estimate import Capacity, MemoryPlan, plan_memory
from clusterkit.dsconfig.hf_model import load_hf_config, parse_count
from clusterkit.dsconfig.resources import (
    ClusterResources,
    load_facts_file,
    local_resources,
    min_known,
    resources_from_facts,
)
from clusterkit.dsconfig.topology import Topology, topology_from_counts, topology_from_hostfile
from clusterkit.errors import UsageError
from clusterkit.node.facts import Maybe, Unavailable


@dataclass(frozen=True)
class SizingRequest:
    """The model (a parameter count or an HF config.json), the cluster, and the margins to keep."""

    params: str | None = None
    hf_config: str | None = None
    largest_layer: str | None = None
    hostfile: str | None = None
    include: str = ""
    exclude: str = ""
    nodes: int | None = None
    gpus_per_node: int | None = None
    #: A doctor JSON (or one node's facts); None: this machine.
    facts: str | None = None
    gpu_memory_gib: float | None = None
    headroom: float = 0.2
    buffer_factor: float = 1.5


@dataclass(frozen=True)
class Sizing:
    """The memory plan and where its inputs came from."""

    plan: MemoryPlan
    model_source: str
    topology: Topology
    resources_source: str


def _largest_layer_guess(total: int) -> int:
    # No layer size given: assume a decoder LLM whose embedding (vocab 32k x hidden) is the largest
    # layer, with hidden ~ sqrt(params / (12 x layers)) and ~32 layers: rough, and said so.
    hidden = int((total / (12 * 32)) ** 0.5)
    return max(1, 32000 * hidden)


def model_size(request: SizingRequest) -> tuple[int, int, str, list[str]]:
    """Total and largest-layer parameters, where they came from, and notes."""
    notes: list[str] = []
    if request.hf_config:
        size = load_hf_config(request.hf_config)
        total, largest, source = size.total_params, size.largest_layer_params, f"{size.source}: {size.detail}"
    elif request.params:
        total, largest, source = parse_count(request.params), 0, "--params"
        if not request.largest_layer:
            largest = min(total, _largest_layer_guess(total))
            notes.append(f"largest layer guessed as {largest:,} parameters (a 32k-vocab embedding); pass "
                         "--largest-layer for ZeRO-3 numbers you can rely on")
    else:
        raise UsageError("give the model: --params N or --hf-config config.json")
    if request.largest_layer:
        largest = parse_count(request.largest_layer, "--largest-layer")
    if largest > total:
        raise UsageError(f"--largest-layer {largest:,} is larger than the model ({total:,})")
    return total, largest, source, notes


def _topology(request: SizingRequest, resources: ClusterResources, notes: list[str]) -> Topology:
    if request.hostfile:
        return topology_from_hostfile(request.hostfile, request.include, request.exclude)
    if request.nodes or request.gpus_per_node:
        return topology_from_counts(nodes=request.nodes or 1, gpus_per_node=request.gpus_per_node or 1)
    counts = {h: len(n.gpus) for h, n in resources.nodes.items() if not isinstance(n.gpus, Unavailable)}
    if counts and all(counts.values()):
        return Topology(tuple(counts), tuple(counts.values()), resources.source)
    notes.append("no hostfile and no GPUs found: estimating for 1 node x 1 GPU")
    return topology_from_counts(nodes=1, gpus_per_node=1)


def size_up(request: SizingRequest) -> Sizing:
    """The memory plan for ``request``; :class:`UsageError` for inputs that contradict each other."""
    if not 0 <= request.headroom < 1:
        raise UsageError("--headroom must be in [0, 1)")
    if (request.include or request.exclude) and not request.hostfile:
        raise UsageError("--include/--exclude need --hostfile")
    if request.hostfile and (request.nodes or request.gpus_per_node):
        raise UsageError("give either --hostfile or --nodes/--gpus-per-node")
    total, largest, source, notes = model_size(request)
    resources = (resources_from_facts(load_facts_file(request.facts), f"--facts {request.facts}")
                 if request.facts else local_resources())
    topology = _topology(request, resources, notes)
    per_node = topology.gpus_per_node or max(topology.gpus_per_host)
    if topology.gpus_per_node is None:
        notes.append(f"nodes run different GPU counts; estimating with {per_node} per node")

    only = next(iter(resources.nodes.values())) if len(resources.nodes) == 1 else None
    mem: dict[str, int | None] = {}
    gpu_sizes: list[Maybe[int]] = []
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
    gpu_bytes = int(request.gpu_memory_gib * 2**30) if request.gpu_memory_gib else min_known(gpu_sizes)
    capacity = Capacity(gpu_bytes, mem, request.headroom)
    plan = plan_memory(total, largest, topology.nodes, per_node, capacity, request.buffer_factor, tuple(notes))
    return Sizing(plan, source, topology, resources.source)
