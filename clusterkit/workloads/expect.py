"""The busbw a cluster's links should give, from the doctor's facts (NVLink, PCIe, InfiniBand, Ethernet).

A ring collective moves the same bytes over every hop, so its busbw is bounded by the slowest hop:
inside a node the GPU's NVLink (active links x per-link rate of its generation) or, without NVLink,
its PCIe link; between nodes the node's network (the sum of its active InfiniBand/RoCE ports for
NCCL; for gloo, which speaks TCP only, the Ethernet interface the ranks use). The expectation is
that bound at the link's signalling rate (per direction, after line encoding), not a tuned figure:
NCCL reaches ~80-95% of it on large messages, gloo much less. Unknown facts give no expectation
and say why, rather than a guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from clusterkit.core.nccl import select_interfaces
from clusterkit.node.facts import GpuFacts, Maybe, NetworkFacts, NicFacts, NodeFacts, Unavailable, known

#: GB/s per NVLink link and direction, by the generation NVML reports (nvmlDeviceGetNvLinkVersion).
NVLINK_GBS_PER_LINK = {1: 20.0, 2: 25.0, 3: 25.0, 4: 25.0, 5: 50.0}
#: GB/s per PCIe lane and direction after line encoding (8b/10b up to gen 2, 128b/130b from gen 3).
PCIE_GBS_PER_LANE = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}


@dataclass(frozen=True)
class Hop:
    """One kind of link on the ring, its rate and how that rate was worked out."""

    name: str
    gbs: float
    arithmetic: str
    host: str = ""


@dataclass
class Expectation:
    """The busbw the slowest hop allows (None when a needed fact is missing: ``reason`` says which)."""

    busbw_gbs: float | None
    hops: list[Hop] = field(default_factory=list)
    reason: str = ""

    @property
    def bottleneck(self) -> Hop | None:
        return min(self.hops, key=lambda hop: hop.gbs) if self.hops else None

    def explain(self) -> str:
        if self.busbw_gbs is None:
            return f"no expectation: {self.reason}"
        grouped: dict[tuple[str, str], list[str]] = {}
        for hop in self.hops:
            grouped.setdefault((hop.name, hop.arithmetic), []).append(hop.host)
        parts = "; ".join(f"{name} ({', '.join(hosts)}): {arithmetic}" for (name, arithmetic), hosts in grouped.items())
        slowest = self.bottleneck
        where = f"{slowest.name} on {slowest.host}" if slowest else "?"
        return f"expected busbw {self.busbw_gbs:.4g} GB/s, set by the slowest hop ({where}); {parts}"


def gpu_link(gpu: GpuFacts) -> Maybe[Hop]:
    """The GPU's own link into the node's fabric: NVLink when it has active links, else PCIe."""
    links = gpu.nvlinks if known(gpu.nvlinks) else []
    active = [link for link in links if link.active]
    if active:
        versions = sorted({link.version for link in active if known(link.version)})
        if not versions:
            return Unavailable(f"GPU {gpu.index}: NVLink generation unknown")
        version = versions[0]
        per_link = NVLINK_GBS_PER_LINK.get(version)
        if per_link is None:
            return Unavailable(f"GPU {gpu.index}: NVLink generation {version} not in the rate table")
        return Hop(f"NVLink {version}", per_link * len(active),
                   f"{len(active)} active links x {per_link:g} GB/s = {per_link * len(active):g} GB/s per GPU")
    gen, width = gpu.pcie_gen_max, gpu.pcie_width_max
    if not (known(gen) and known(width)):
        return Unavailable(f"GPU {gpu.index}: PCIe generation/width unknown")
    lane = PCIE_GBS_PER_LANE.get(gen)
    if lane is None:
        return Unavailable(f"GPU {gpu.index}: PCIe gen {gen} not in the rate table")
    return Hop(f"PCIe gen{gen} x{width}", lane * width, f"x{width} lanes x {lane:g} GB/s = {lane * width:.4g} GB/s")


def _node_gpus(node: NodeFacts) -> Maybe[list[GpuFacts]]:
    if not known(node.nvidia):
        return Unavailable(f"no GPU facts: {node.nvidia.reason}")
    return node.nvidia.gpus


def intra_node_hop(node: NodeFacts, ranks: int) -> Maybe[Hop]:
    """The slowest GPU link among the ``ranks`` GPUs a node runs."""
    gpus = _node_gpus(node)
    if not known(gpus):
        return gpus
    if len(gpus) < ranks:
        return Unavailable(f"{node.host.hostname} has {len(gpus)} GPUs for {ranks} ranks")
    hops = [gpu_link(gpu) for gpu in gpus[:ranks]]
    missing = [h for h in hops if not known(h)]
    if missing:
        return missing[0]
    return min((h for h in hops if known(h)), key=lambda h: h.gbs)


def _interface_for(network: NetworkFacts, env: Mapping[str, str], backend: str) -> Maybe[NicFacts]:
    nics = network.nics if known(network.nics) else []
    candidates = [n for n in nics if n.kind != "loopback" and n.operstate in ("up", "unknown") and n.ipv4]
    spec = env.get("GLOO_SOCKET_IFNAME" if backend == "gloo" else "NCCL_SOCKET_IFNAME") or env.get(
        "NCCL_SOCKET_IFNAME", "")
    if spec:
        chosen = set(select_interfaces(spec, [n.name for n in candidates]))
        candidates = [n for n in candidates if n.name in chosen]
    rated = [n for n in candidates if known(n.speed_mbps) and n.speed_mbps > 0]
    if not rated:
        return Unavailable("no addressed network interface with a known speed"
                           + (f" matching {spec}" if spec else ""))
    return max(rated, key=lambda n: n.speed_mbps if known(n.speed_mbps) else 0)


def inter_node_hop(node: NodeFacts, backend: str) -> Maybe[Hop]:
    """The node's way out: its active InfiniBand/RoCE ports for NCCL, else its Ethernet interface."""
    if not known(node.network):
        return Unavailable(f"no network facts: {node.network.reason}")
    network = node.network
    ports = network.ib_ports if known(network.ib_ports) else []
    active = [p for p in ports if p.state == "ACTIVE" and known(p.rate_gbps)]
    ib_disabled = node.env_vars.get("NCCL_IB_DISABLE", "0") not in ("", "0")
    if backend == "nccl" and active and not ib_disabled:
        total = sum(p.rate_gbps for p in active if known(p.rate_gbps))
        layer = "InfiniBand" if all(p.link_layer == "InfiniBand" for p in active) else "RDMA"
        rates = sorted({p.rate for p in active})
        return Hop(f"{layer} x{len(active)}", total / 8.0,
                   f"{len(active)} active port(s) of {', '.join(rates)} = {total:g} Gb/s / 8 = {total / 8:.4g} GB/s")
    nic = _interface_for(network, node.env_vars, backend)
    if not known(nic):
        return nic
    mbps = nic.speed_mbps if known(nic.speed_mbps) else 0
    return Hop(f"Ethernet {nic.name}", mbps / 8000.0, f"{nic.name} at {mbps} Mb/s / 8000 = {mbps / 8000:.4g} GB/s")


def expected_busbw(nodes: Mapping[str, Maybe[NodeFacts]], ranks_per_node: Mapping[str, int],
                   backend: str) -> Expectation:
    """The busbw bound for a collective over ``ranks_per_node`` (hostfile order) with ``backend``."""
    hosts: Sequence[str] = list(ranks_per_node)
    hops: list[Hop] = []
    for host in hosts:
        node = nodes.get(host, Unavailable("not surveyed"))
        if not known(node):
            return Expectation(None, reason=f"{host}: {node.reason}")
        ranks = ranks_per_node[host]
        if ranks > 1:
            if backend == "gloo":
                return Expectation(None, reason="CPU ranks on one node talk over loopback TCP, which has no "
                                                "rated speed")
            intra = intra_node_hop(node, ranks)
            if not known(intra):
                return Expectation(None, reason=f"{host}: {intra.reason}")
            hops.append(Hop(intra.name, intra.gbs, intra.arithmetic, host))
        if len(hosts) > 1:
            inter = inter_node_hop(node, backend)
            if not known(inter):
                return Expectation(None, reason=f"{host}: {inter.reason}")
            hops.append(Hop(inter.name, inter.gbs, inter.arithmetic, host))
    if not hops:
        return Expectation(None, reason="a single rank moves nothing over any link")
    return Expectation(min(h.gbs for h in hops), hops)
