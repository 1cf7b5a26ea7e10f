"""The command line turned into a :class:`~clusterkit.cluster.Target` once, and opened as ``Nodes``.

Which transport a command takes (the one place that decides; :func:`clusterkit.cluster.open_nodes` then
builds it): inside an allocation (``SLURM_JOB_ID`` set) without a HOSTFILE, or with ``--slurm`` (its
partition/nodes options become ``salloc`` arguments outside an allocation), the nodes come from Slurm and
are reached through srun; a HOSTFILE, or ``--no-slurm``, means SSH (or no transport at all when the
hostfile names only this machine); neither means this machine.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from clusterkit.cluster import Nodes, Target, open_nodes
from clusterkit.cluster.remote.slurm import in_allocation
from clusterkit.cluster.remote.ssh import RemoteError
from clusterkit.cluster.target import allocation_target, hostfile_target, this_machine
from clusterkit.commands.common import ssh_settings
from clusterkit.commands.slurm import slurm_request, use_slurm
from clusterkit.errors import ClusterkitError, UsageError


def target_from_args(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None,
                     slots_here: int = 1, nodes_needed: str = "") -> Target:
    """The hosts this command works on and how to reach them, from its flags (HOSTFILE, --include/
    --exclude, the SSH flags, --slurm and its request); this machine when none names nodes, unless
    ``nodes_needed`` (then the usage error it says)."""
    hostfile = getattr(args, "hostfile", None)
    include, exclude = getattr(args, "include", ""), getattr(args, "exclude", "")
    if hasattr(args, "slurm") and use_slurm(args, hostfile, environ):
        refuse_ssh_options(args)
        # Inside an allocation its nodes are used as they are; outside, salloc is asked (released after).
        request = None if in_allocation(environ) else slurm_request(args)
        env = os.environ if environ is None else environ
        return allocation_target(request, include=include, exclude=exclude,
                                 agent_dir=env.get("CLUSTERKIT_AGENT_DIR") or None)
    if hostfile:
        return hostfile_target(hostfile, ssh_settings(args), include=include, exclude=exclude)
    if nodes_needed:
        raise UsageError(nodes_needed)
    if include or exclude:
        raise UsageError("--include/--exclude need a HOSTFILE (or a Slurm allocation)")
    return this_machine(slots_here)


@contextmanager
def opened(target: Target, environ: Mapping[str, str] | None = None) -> Iterator[Nodes]:
    """The target's nodes for the length of the block (an allocation asked for is released after);
    Slurm's refusals become one-line errors naming what to run."""
    try:
        nodes = open_nodes(target, environ)
    except RemoteError as exc:
        raise ClusterkitError(f"{exc}" + (f"; fix: {exc.fix}" if exc.fix else "")) from None
    with nodes:
        yield nodes


#: SSH options (dest, flag) that mean nothing when the nodes are reached through Slurm.
SSH_ONLY_OPTIONS = (("user", "--user"), ("ssh_port", "--ssh-port"), ("identity", "--identity"),
                    ("trust_new_hosts", "--trust-new-hosts"))


def refuse_ssh_options(args: argparse.Namespace) -> None:
    """A usage error for SSH flags given where Slurm reaches the nodes (they would be ignored silently)."""
    given = [flag for dest, flag in SSH_ONLY_OPTIONS if getattr(args, dest, None)]
    if given:
        raise UsageError(f"{'/'.join(given)}: SSH options, but the nodes are reached through Slurm (srun); give a "
                         "HOSTFILE (or --no-slurm) to reach them over SSH")
