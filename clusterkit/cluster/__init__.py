"""How clusterkit reaches nodes: a :class:`Target` built once, opened as one :class:`Nodes`.

:func:`open_nodes` is the one place that looks at the transport; everything else takes a ``Nodes``.
"""

from __future__ import annotations

from clusterkit.cluster.nodes import (
    BroadcastOptions,
    HostStream,
    LaunchLine,
    LaunchStyle,
    Nodes,
    ProgressListener,
    SchedulerView,
    SshMesh,
)
from clusterkit.cluster.result import CommandOutput, GroupResult, HostResult
from clusterkit.cluster.target import LocalReach, Reach, SlurmReach, SshReach, Target

__all__ = ["BroadcastOptions", "CommandOutput", "GroupResult", "HostResult", "HostStream", "LaunchLine",
           "LaunchStyle", "LocalReach", "Nodes", "ProgressListener", "Reach", "SchedulerView", "SlurmReach",
           "SshMesh", "SshReach", "Target", "open_nodes"]


def open_nodes(target: Target, progress: ProgressListener | None = None) -> Nodes:
    """The target's nodes, reached the way it says (asking Slurm for an allocation where it must).

    The only branch on the transport in clusterkit; use as a context manager (``close`` releases what
    opening took)."""
    raise NotImplementedError("the transports land with the cluster/ core (issue 20)")
