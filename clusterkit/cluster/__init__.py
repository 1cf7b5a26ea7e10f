"""How clusterkit reaches nodes: a :class:`Target` built once, opened as one :class:`Nodes`.

:func:`open_nodes` is the one place that looks at the transport; everything else takes a ``Nodes``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from clusterkit.cluster.nodes import (
    BroadcastOptions,
    HostStream,
    LaunchLine,
    LaunchStyle,
    Nodes,
    ProgressListener,
    SchedulerView,
)
from clusterkit.cluster.remote.slurm import Allocation
from clusterkit.cluster.result import CommandOutput, GroupResult, HostResult
from clusterkit.cluster.target import LocalReach, Reach, SlurmReach, SshReach, Target

__all__ = ["BroadcastOptions", "CommandOutput", "GroupResult", "HostResult", "HostStream", "LaunchLine",
           "LaunchStyle", "LocalReach", "Nodes", "ProgressListener", "Reach", "SchedulerView", "SlurmReach",
           "SshReach", "Target", "open_nodes"]


def open_nodes(target: Target, environ: Mapping[str, str] | None = None) -> Nodes:
    """The target's nodes, reached the way it says (asking Slurm for an allocation where it must).

    The only branch on the transport in clusterkit; use as a context manager (``close`` releases what
    opening took). Raises :class:`~clusterkit.cluster.remote.ssh.RemoteError` (SlurmError) when Slurm refuses.
    """
    reach = target.reach
    if isinstance(reach, SshReach):
        from clusterkit.cluster.ssh import SshNodes

        return SshNodes(target.hosts, reach.settings, hostfile=target.hostfile, whole=target.every_host)
    if isinstance(reach, LocalReach):
        from clusterkit.cluster.local import LocalNodes

        return LocalNodes(target.hosts[0], hostfile=target.hostfile, whole=target.every_host)
    from clusterkit.cluster.remote.slurm import current_allocation, describe_job, release_allocation, request_allocation
    from clusterkit.cluster.slurm import SlurmNodes, allocation_hostfile
    from clusterkit.core.inventory import select_hosts

    env = os.environ if environ is None else environ
    if reach.job_id is not None:
        alloc = Allocation(describe_job(reach.job_id))
    elif reach.request is None:
        alloc = current_allocation(env)
    else:
        alloc = request_allocation(reach.request)
    try:
        hosts = select_hosts(allocation_hostfile(alloc), target.include, target.exclude)
    except BaseException:
        release_allocation(alloc)
        raise
    return SlurmNodes(alloc, hosts, environ=env, agent_dir=reach.agent_dir)
