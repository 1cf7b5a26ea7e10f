"""What the config check and the estimate need to know about the machines: GPUs, free RAM, libaio.

Read from a doctor facts file (``--facts``) or from this machine. Anything that cannot be read is an
``Unavailable`` with the reason, and the rule or estimate that needs it says it was skipped and why.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from clusterkit.core.facts_codec import FactsDecodeError, from_jsonable
from clusterkit.dsconfig.load import read_json_file
from clusterkit.errors import InputError
from clusterkit.node.facts import GpuFacts, Maybe, NodeFacts, Unavailable


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: Maybe[str]
    memory_total_bytes: Maybe[int]


@dataclass(frozen=True)
class NodeResources:
    """One node as the estimate and the config rules see it."""

    host: str
    gpus: Maybe[list[GpuInfo]]
    mem_available_bytes: Maybe[int]
    mem_total_bytes: Maybe[int]
    #: Whether DeepSpeed's async_io op (NVMe offload) can work: libaio found / op compatible.
    libaio: Maybe[bool]


@dataclass(frozen=True)
class ClusterResources:
    nodes: dict[str, NodeResources]
    source: str

    def node(self, host: str) -> NodeResources | None:
        return self.nodes.get(host)


# ------------------------------------------------------------------------------------- facts files


def load_facts_file(path: str | Path) -> dict[str, Maybe[NodeFacts]]:
    """Read ``--facts``: one NodeFacts JSON, or an object whose ``facts`` maps host -> NodeFacts JSON.

    The doctor's ``--json`` report has that ``facts`` shape; a host whose facts could not be collected
    is ``{"unavailable": reason}`` there and comes back as ``Unavailable``.
    """
    p = Path(path)
    doc = read_json_file(p, "facts file")
    if not isinstance(doc, dict):
        raise InputError("expected a JSON object (NodeFacts, or {\"facts\": {host: NodeFacts}})", str(p))
    try:
        if "facts" in doc and isinstance(doc["facts"], dict):
            result: dict[str, Maybe[NodeFacts]] = {}
            for host, data in doc["facts"].items():
                if isinstance(data, dict) and set(data) == {"unavailable"}:
                    result[str(host)] = Unavailable(str(data["unavailable"]))
                else:
                    result[str(host)] = from_jsonable(NodeFacts, data)
            if not result:
                raise InputError("the 'facts' object is empty", str(p))
            return result
        facts = from_jsonable(NodeFacts, doc)
    except FactsDecodeError as exc:
        raise InputError(f"does not match the facts schema: {exc}", str(p)) from None
    return {facts.host.hostname: facts}


def _gpus_from(facts: NodeFacts) -> Maybe[list[GpuInfo]]:
    nvidia = facts.nvidia
    if isinstance(nvidia, Unavailable):
        return nvidia
    if isinstance(nvidia.gpus, Unavailable):
        return nvidia.gpus
    return [_gpu_info(g) for g in nvidia.gpus]


def _gpu_info(gpu: GpuFacts) -> GpuInfo:
    return GpuInfo(gpu.index, gpu.name, gpu.compute_capability, gpu.memory_total_bytes)


def _libaio_from(facts: NodeFacts) -> Maybe[bool]:
    env = facts.python_env
    if not isinstance(env, Unavailable) and not isinstance(env.deepspeed_ops, Unavailable):
        for op in env.deepspeed_ops:
            if op.name == "async_io":
                return op.compatible
    cuda = facts.cuda
    if not isinstance(cuda, Unavailable) and not isinstance(cuda.libraries, Unavailable) \
            and any(lib.soname.startswith("libaio.so") for lib in cuda.libraries):
        return True
    return Unavailable("the facts name neither DeepSpeed's async_io op nor libaio")


def resources_from_facts(facts: dict[str, Maybe[NodeFacts]], source: str) -> ClusterResources:
    """Per-node resources out of collected facts (a host without facts has every field Unavailable)."""
    nodes: dict[str, NodeResources] = {}
    for host, node in facts.items():
        if isinstance(node, Unavailable):
            missing = Unavailable(f"no facts for {host}: {node.reason}")
            nodes[host] = NodeResources(host, missing, missing, missing, missing)
            continue
        system = node.system
        available: Maybe[int] = system if isinstance(system, Unavailable) else system.mem_available_bytes
        total: Maybe[int] = system if isinstance(system, Unavailable) else system.mem_total_bytes
        nodes[host] = NodeResources(host, _gpus_from(node), available, total, _libaio_from(node))
    return ClusterResources(nodes, source)


# ------------------------------------------------------------------------------------ this machine


#: What the config check and the estimate read here: GPUs, RAM, DeepSpeed's ops (libaio), CUDA libraries.
LOCAL_SECTIONS = ["system", "nvidia", "cuda", "python_env"]


def local_resources(timeout_s: float = 20.0) -> ClusterResources:
    """This machine's resources, read by the doctor's own collectors, so a check with ``--facts`` from a
    doctor run here and one without agree (one definition per fact: libaio is DeepSpeed's async_io op)."""
    from clusterkit.node.collect.node import CollectOptions, collect_node

    facts = collect_node(CollectOptions(sections=LOCAL_SECTIONS, section_timeout_s=timeout_s))
    return resources_from_facts({socket.gethostname(): facts}, "this machine")


def min_known(values: list[Maybe[int]]) -> int | None:
    """The smallest value that was read (None if none was)."""
    known = [v for v in values if not isinstance(v, Unavailable)]
    return min(known) if known else None
