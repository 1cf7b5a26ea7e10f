"""``clusterkit slurm hostfile``, and the Slurm flags doctor and launch share.

Which transport a command takes: inside an allocation (``SLURM_JOB_ID`` set) without a HOSTFILE, or
with ``--slurm`` (its partition/nodes options become ``salloc`` arguments outside an allocation), the
nodes come from Slurm and are reached through srun; a HOSTFILE, or ``--no-slurm``, means SSH as ever.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clusterkit.cluster.remote.slurm import Allocation, SlurmError, allocation, current_allocation, in_allocation
from clusterkit.cluster.slurm import hostfile_text
from clusterkit.core.slurmrequest import SlurmRequest
from clusterkit.errors import ClusterkitError, ExitCode, UsageError


def add_slurm_arguments(parser: Any) -> None:
    """--slurm/--no-slurm and the allocation request (--partition, --nodes, --nodelist, --slurm-time...)."""
    group = parser.add_argument_group("slurm")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--slurm", action="store_true",
                        help="take the nodes from Slurm and reach them through srun: the allocation this runs in "
                             "(SLURM_JOB_ID), else a new one from salloc with the options below (released at the "
                             "end). The default inside an allocation when no HOSTFILE is given")
    choice.add_argument("--no-slurm", action="store_true",
                        help="never use Slurm, even inside an allocation (HOSTFILE over SSH, or this machine)")
    group.add_argument("--partition", metavar="P", help="salloc --partition (implies --slurm)")
    group.add_argument("--nodes", metavar="N", help="salloc --nodes: a count or MIN-MAX (implies --slurm)")
    group.add_argument("--nodelist", metavar="LIST", help="salloc --nodelist, e.g. gpu[01-04] (implies --slurm)")
    group.add_argument("--slurm-time", metavar="T", help="salloc --time, e.g. 10:00 (implies --slurm)")
    group.add_argument("--slurm-args", default="", metavar="ARGS",
                       help="more salloc arguments, e.g. \"--gpus-per-node=8 --account=x\" (implies --slurm)")
    group.add_argument("--slurm-wait", type=float, default=60.0, metavar="SECONDS",
                       help="how long salloc may wait for nodes that are busy (default: 60); nodes that cannot "
                            "be had now (drained, down) are reported at once")


def _request_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) for name in ("partition", "nodes", "nodelist", "slurm_time", "slurm_args"))


def use_slurm(args: argparse.Namespace, hostfile: str | None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this command reaches its nodes through Slurm (see the module docstring)."""
    asked = args.slurm or _request_given(args)
    if args.no_slurm:
        if _request_given(args):
            raise UsageError("--partition/--nodes/--nodelist/--slurm-time/--slurm-args ask Slurm for nodes; "
                             "they cannot go with --no-slurm")
        return False
    if asked and hostfile:
        raise UsageError(f"--slurm takes the nodes from the Slurm allocation; give no HOSTFILE ({hostfile}), or "
                         "drop --slurm to use the hostfile over SSH")
    if asked:
        return True
    return hostfile is None and in_allocation(environ)


def slurm_request(args: argparse.Namespace) -> SlurmRequest:
    """What to ask salloc for, from the flags."""
    return SlurmRequest(partition=args.partition, nodes=args.nodes, nodelist=args.nodelist, time=args.slurm_time,
                        extra=tuple(shlex.split(args.slurm_args)), wait_s=args.slurm_wait)


@contextmanager
def slurm_allocation(args: argparse.Namespace) -> Iterator[Allocation]:
    """The allocation to run in (this one, or one from salloc, released on leaving); Slurm's refusals
    become one-line errors (exit 1) naming what to run."""
    try:
        with allocation(slurm_request(args)) as alloc:
            yield alloc
    except SlurmError as exc:
        raise ClusterkitError(f"{exc}" + (f"; fix: {exc.fix}" if exc.fix else "")) from None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "slurm", help="Slurm helpers: a DeepSpeed hostfile from the allocation",
        description="Commands for clusters run by Slurm. doctor and launch take --slurm themselves.")
    sub = parser.add_subparsers(dest="slurm_command", metavar="SUBCOMMAND")
    hostfile = sub.add_parser(
        "hostfile", help="write a DeepSpeed hostfile from the allocation this runs in",
        description="Write the allocation's nodes (SLURM_JOB_NODELIST order: node rank) as a DeepSpeed hostfile: "
                    "slots are the GPUs the job holds on each node, else its --ntasks-per-node, else 1.")
    hostfile.add_argument("--output", "-o", metavar="FILE", help="write here (default: standard output)")
    hostfile.add_argument("--slots", type=int, metavar="N", help="slots per node instead of the allocation's")
    hostfile.set_defaults(run=run_hostfile)

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return int(ExitCode.USAGE)

    parser.set_defaults(run=usage)


def run_hostfile(args: argparse.Namespace) -> int:
    if not in_allocation():
        raise UsageError("not inside a Slurm allocation (SLURM_JOB_ID is not set): run it in salloc or an sbatch "
                         "script, e.g. salloc -N 4 clusterkit slurm hostfile -o hostfile")
    if args.slots is not None and args.slots < 1:
        raise UsageError(f"--slots {args.slots}: a hostfile needs at least one slot per node")
    try:
        alloc = current_allocation()
    except SlurmError as exc:
        raise ClusterkitError(f"{exc}" + (f"; fix: {exc.fix}" if exc.fix else "")) from None
    text = hostfile_text(alloc, args.slots)
    if args.output:
        target = Path(args.output)
        scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        scratch.write_text(text, encoding="utf-8")
        scratch.replace(target)
    else:
        print(text, end="")
    return int(ExitCode.OK)
