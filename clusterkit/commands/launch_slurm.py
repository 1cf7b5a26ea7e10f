"""``clusterkit launch`` under Slurm: the same preflight over srun, then the srun line (or DeepSpeed's
Slurm launcher line) in the allocation.

Inside an allocation the line runs in place of clusterkit, as over SSH. In an allocation clusterkit
made itself (``--slurm --nodes N`` from a login node) the line runs as a child and the allocation is
released when it ends; ``--print-only`` then prints a line without ``--jobid``, to run inside an
allocation of your own.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.text import Text

from clusterkit.cluster.slurm import allocation_hostfile, hostfile_text
from clusterkit.commands.slurm import slurm_allocation
from clusterkit.dsenv import effective_values, parse_deepspeed_env
from clusterkit.errors import ExitCode, UsageError
from clusterkit.facts import SlurmLaunchIntent
from clusterkit.inventory import ActiveHost, select_hosts
from clusterkit.launch import ConfigToCheck, PreflightRequest, exec_launch, preflight, run_launch
from clusterkit.launchline import LaunchPlan, build_launch_line, shell_line
from clusterkit.remote.slurm import Allocation
from clusterkit.report import DoctorReport
from clusterkit.slurmlaunch import (
    SrunPlan,
    build_srun_line,
    dataloader_workers,
    parse_interval,
    runner_exports,
    saves_no_checkpoints,
)
from clusterkit.survey import DEFAULT_MASTER_PORT


def deepspeed_env_values(cwd: str) -> dict[str, str]:
    """What DeepSpeed's runner exports from ``~/.deepspeed_env`` then ``./.deepspeed_env`` (cwd wins)."""
    values: dict[str, str] = {}
    for path in (Path.home() / ".deepspeed_env", Path(cwd) / ".deepspeed_env"):
        if path.is_file():
            entries, _ = parse_deepspeed_env(path.read_text(encoding="utf-8", errors="replace").splitlines(),
                                             str(path))
            values.update(effective_values(entries))
    return values


def _intent(args: argparse.Namespace, launcher: str, hosts: list[ActiveHost], cpus: int | None,
            script_args: list[str]) -> SlurmLaunchIntent:
    interval = None
    source = ""
    if args.checkpoint_every:
        try:
            interval = parse_interval(args.checkpoint_every)
        except ValueError as exc:
            raise UsageError(f"--checkpoint-every: {exc}") from None
        source = f"--checkpoint-every {args.checkpoint_every}"
    no_checkpoints = saves_no_checkpoints(script_args)
    return SlurmLaunchIntent(launcher=launcher, ranks_per_node=max(len(h.slots) for h in hosts),
                             cpus_per_node_task=cpus if launcher == "srun" else None,
                             dataloader_workers=dataloader_workers(script_args), checkpoint_interval_s=interval,
                             checkpoint_source="--save_strategy no" if no_checkpoints else source,
                             no_checkpoints=no_checkpoints)


def _first_address(host: str) -> str | None:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


def launch_over_slurm(args: argparse.Namespace, base: LaunchPlan, config: ConfigToCheck | None,
                      show_preflight: Callable[[DoctorReport, str, Console], None]) -> int:
    """Preflight over srun in the allocation, then print and run the line; the exit code."""
    err = Console(stderr=True)
    launcher = args.launcher or "srun"
    with slurm_allocation(args) as alloc:
        nodes = allocation_hostfile(alloc)
        hosts = select_hosts(nodes, args.include, args.exclude)
        cpus = args.cpus_per_task or min((alloc.job.cpus_per_node.get(h.name, 0) for h in hosts), default=0) or None
        if not args.no_preflight:
            checked = preflight(PreflightRequest(
                hosts=hosts, hostfile=nodes.path, python=base.python, timeout_s=args.timeout,
                master_addr=args.master_addr, master_port=args.master_port, skip=args.skip, config=config,
                script=None if base.module else base.script, slurm=alloc,
                slurm_intent=_intent(args, launcher, hosts, cpus, base.script_args)), err)
            base.master_addr, base.master_port = checked.master_addr, checked.master_port
            show_preflight(checked.report, nodes.path, err)
            if checked.report.has_errors and not args.force:
                err.print(f"[bold red]not launching:[/] the preflight found {checked.report.counts()['error']} "
                          "error(s); fix them (or pass --force to launch anyway)", soft_wrap=True)
                return int(ExitCode.PROBLEMS)
        base.master_addr = base.master_addr or _first_address(hosts[0].name)
        if base.master_port is None:
            base.master_port = DEFAULT_MASTER_PORT
        argv = _line(args, launcher, base, alloc, hosts, cpus)
        if args.print_only:
            print(shell_line(argv))
            return int(ExitCode.OK)
        err.print(Text.assemble(("launching: ", "bold"), shell_line(argv)), soft_wrap=True)
        if alloc.owned:
            return run_launch(argv)
        exec_launch(argv)


def _line(args: argparse.Namespace, launcher: str, base: LaunchPlan, alloc: Allocation, hosts: list[ActiveHost],
          cpus: int | None) -> list[str]:
    cwd = str(Path.cwd())
    if launcher == "slurm":
        # DeepSpeed's runner reads the hostfile and filters it itself; it runs only here, on this machine.
        path = Path(tempfile.gettempdir()) / f"clusterkit-slurm-{alloc.job_id}.hostfile"
        path.write_text(hostfile_text(alloc), encoding="utf-8")
        base.hostfile, base.launcher, base.no_ssh_check = str(path), "slurm", True
        base.include, base.exclude = args.include, args.exclude
        return build_launch_line(base)
    gpus = min(alloc.job.gpus_per_node.get(h.name, 0) for h in hosts)
    job_id = None if alloc.owned and args.print_only else alloc.job_id
    exports = runner_exports(cwd, os.environ.get("PYTHONPATH"), deepspeed_env_values(cwd))
    return build_srun_line(SrunPlan(base, hosts, cwd, job_id=job_id, cpus_per_task=cpus, gpus_per_node=gpus,
                                    exports=exports, srun_args=args.launcher_args))
