"""How many ranks a launch will start and where: from a hostfile (with include/exclude) or a count.

DeepSpeed's launcher starts one rank per active slot, so the world size is the sum of the active slots.
With tensor, pipeline or sequence parallelism the batch arithmetic uses the data-parallel size
``world / (tp x pp x sp)`` instead (DeepSpeedConfig asks ``mpu.get_data_parallel_world_size()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clusterkit.core.inventory import ActiveHost, load_hostfile, select_hosts
from clusterkit.errors import UsageError


@dataclass(frozen=True)
class Topology:
    """The ranks of one launch: hosts in node-rank order and the GPUs (ranks) each runs."""

    hosts: tuple[str, ...]
    gpus_per_host: tuple[int, ...]
    source: str

    @property
    def world_size(self) -> int:
        return sum(self.gpus_per_host)

    @property
    def nodes(self) -> int:
        return len(self.hosts)

    @property
    def gpus_per_node(self) -> int | None:
        """The GPUs of every node when they all run the same number, else None."""
        counts = set(self.gpus_per_host)
        return counts.pop() if len(counts) == 1 else None

    def describe(self) -> str:
        if self.nodes == 1:
            return f"{self.world_size} rank{'s' * (self.world_size != 1)} on {self.hosts[0]} ({self.source})"
        per = self.gpus_per_node
        shape = f"{self.nodes} nodes x {per}" if per else \
            f"{self.nodes} nodes ({'+'.join(str(n) for n in self.gpus_per_host)})"
        return f"{self.world_size} ranks = {shape} ({self.source})"


def topology_from_hosts(hosts: list[ActiveHost], source: str) -> Topology:
    """A topology from hosts already filtered by :func:`clusterkit.core.inventory.select_hosts`."""
    return Topology(tuple(h.name for h in hosts), tuple(len(h.slots) for h in hosts), source)


def topology_from_hostfile(path: str | Path, include: str = "", exclude: str = "") -> Topology:
    """World size and GPUs per node of a hostfile after DeepSpeed's ``--include``/``--exclude``."""
    hostfile = load_hostfile(path)
    hosts = select_hosts(hostfile, include, exclude)
    source = f"hostfile {hostfile.path}"
    if include:
        source += f" --include {include}"
    if exclude:
        source += f" --exclude {exclude}"
    return topology_from_hosts(hosts, source)


def topology_from_counts(world_size: int | None = None, nodes: int | None = None,
                         gpus_per_node: int | None = None) -> Topology:
    """A topology from ``--world-size N`` or ``--nodes N --gpus-per-node G`` (hosts named node0...)."""
    if world_size is not None:
        if world_size < 1:
            raise UsageError(f"--world-size must be at least 1, got {world_size}")
        if nodes is None and gpus_per_node is None:
            return Topology(("node0",), (world_size,), f"--world-size {world_size}")
        nodes = nodes or (world_size // gpus_per_node if gpus_per_node else 1)
        gpus_per_node = gpus_per_node or world_size // nodes
        if nodes * gpus_per_node != world_size:
            raise UsageError(f"--world-size {world_size} is not --nodes {nodes} x --gpus-per-node "
                             f"{gpus_per_node}")
    if nodes is None or gpus_per_node is None:
        raise UsageError("give --nodes and --gpus-per-node together (or a --hostfile)")
    if nodes < 1 or gpus_per_node < 1:
        raise UsageError("--nodes and --gpus-per-node must be at least 1")
    return Topology(tuple(f"node{i}" for i in range(nodes)), (gpus_per_node,) * nodes,
                    f"--nodes {nodes} --gpus-per-node {gpus_per_node}")


@dataclass(frozen=True)
class Parallelism:
    """Model-parallel degrees that divide the world into data-parallel groups (all 1 for plain ZeRO)."""

    tensor: int = 1
    pipeline: int = 1
    sequence: int = 1

    @property
    def model_parallel(self) -> int:
        return self.tensor * self.pipeline * self.sequence

    def describe(self) -> str:
        parts = [f"{name}={size}" for name, size in
                 (("tp", self.tensor), ("pp", self.pipeline), ("sp", self.sequence)) if size > 1]
        return " x ".join(parts)


def data_parallel_size(world_size: int, parallel: Parallelism) -> int | None:
    """``world / (tp x pp x sp)``, or None when the world does not divide evenly."""
    if world_size % parallel.model_parallel:
        return None
    return world_size // parallel.model_parallel
