"""``clusterkit launch HOSTFILE -- train.py ARGS``: preflight, then DeepSpeed's own launcher.

The preflight is the doctor's survey and checks (one SSH session per node, no workloads) plus the
config check of the DeepSpeed config the script will read. It also settles what DeepSpeed would
otherwise guess at launch time: the master address (tested from every node) and a master port that
is free on the first host. Then the ``deepspeed`` line is built (:mod:`clusterkit.launchline`),
printed, and, unless ``--print-only``, run in place of this process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from clusterkit.commands.common import (
    add_hostfile_arguments,
    add_ssh_arguments,
    add_trailing_args_parser,
    id_list,
    interpreter_path,
    ssh_settings,
)
from clusterkit.commands.launch_slurm import launch_over_slurm
from clusterkit.commands.slurm import add_slurm_arguments, use_slurm
from clusterkit.errors import ClusterkitError, ExitCode, UsageError
from clusterkit.inventory import load_hostfile, select_hosts
from clusterkit.launch import ConfigToCheck, PreflightRequest, exec_launch, preflight
from clusterkit.launchline import (
    CONFIG_STYLES,
    HF_CONFIG_FLAG,
    LaunchPlan,
    build_launch_line,
    config_in_args,
    deepspeed_launcher,
    shell_line,
)
from clusterkit.launchsite import launch_place
from clusterkit.report import DoctorReport, render_table, summary_line
from clusterkit.slurmlaunch import SLURM_LAUNCHERS


def register(subparsers: Any) -> None:
    parser = add_trailing_args_parser(
        subparsers, "launch",
        help="preflight the cluster and the DeepSpeed config, then run the deepspeed launch line",
        description="Survey every node (the doctor's checks) and check the DeepSpeed config the script "
                    "reads, choose the master address and a free master port, then build the `deepspeed` "
                    "line (runner options before the script) and run it from this directory. Stops with "
                    "exit 1 when the preflight finds an error, unless --force.",
        epilog="example: clusterkit launch hostfile --python /opt/env/bin/python -- train.py "
               "--deepspeed_config ds_config.json\n"
               "         clusterkit launch hostfile --print-only -- train.py   # print the line, run nothing",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_hostfile_arguments(parser, required=False)
    parser.add_argument("--python", metavar="PATH", type=interpreter_path,
                        help="training env's interpreter, the same path on every node; its `deepspeed` script "
                             f"launches (default: this interpreter, {sys.executable})")
    parser.add_argument("--deepspeed-config", metavar="FILE",
                        help="DeepSpeed config to check and to hand to the script when its arguments name none")
    parser.add_argument("--config-style", choices=sorted(CONFIG_STYLES), default="deepspeed",
                        help="how the script takes that config: deepspeed (--deepspeed_config FILE, from "
                             "deepspeed.add_config_arguments; the default) or hf (the HF Trainer's --deepspeed "
                             "FILE, whose \"auto\" values are then filled from the script's arguments)")
    parser.add_argument("--master-addr", metavar="ADDR",
                        help="rendezvous address (default: the first host's address as DeepSpeed picks it, "
                             "after testing it from every node)")
    parser.add_argument("--master-port", type=int, metavar="PORT",
                        help="rendezvous port (default: 29500 if free on the first host, else a free one)")
    parser.add_argument("--launcher", help="DeepSpeed multi-node launcher (default: pdsh; under Slurm: srun, "
                        "clusterkit's srun line running DeepSpeed's launch.py on each node, or slurm, DeepSpeed's "
                        "own Slurm launcher)")
    parser.add_argument("--launcher-args", default="", metavar="ARGS", help="passed as --launcher_args")
    parser.add_argument("--module", action="store_true", help="the script is a module name (python -m)")
    parser.add_argument("--print-only", action="store_true",
                        help="print the deepspeed line on stdout after the preflight; run nothing")
    parser.add_argument("--no-preflight", action="store_true",
                        help="build the line without looking at the nodes or the config")
    parser.add_argument("--force", action="store_true", help="launch even when the preflight finds errors")
    parser.add_argument("--skip", type=id_list, default=[], metavar="IDS",
                        help="comma-separated doctor check ids/tags or config rule ids to leave out")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="per-node deadline for the preflight survey (default: 30)")
    parser.add_argument("--cpus-per-task", type=int, metavar="N",
                        help="under Slurm: CPUs for each node's task, shared by its ranks (default: all the job "
                             "holds on the node)")
    parser.add_argument("--checkpoint-every", metavar="DURATION",
                        help="under Slurm: how often the job checkpoints (30m, 2h), judged against the time limit")
    add_ssh_arguments(parser)
    add_slurm_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.trainer_args:
        raise UsageError("give the training command after '--': clusterkit launch HOSTFILE -- train.py ARGS")
    script, *script_args = args.trainer_args
    if not args.module and not Path(script).is_file():
        raise UsageError(f"{script}: no such file in {Path.cwd()} (DeepSpeed runs it from this directory "
                         "on every node; pass --module for a module name)")
    python = args.python or sys.executable
    launcher = deepspeed_launcher(python)
    if not os.access(launcher, os.X_OK):
        raise ClusterkitError(f"no DeepSpeed launcher at {launcher}; fix: {python} -m pip install deepspeed "
                              "(or pass --python with the training env's interpreter)")
    slurm = use_slurm(args, args.hostfile)
    _check_launcher(args, slurm)
    config_path = args.deepspeed_config
    named = config_in_args(script_args)
    if named is not None:
        if config_path and Path(config_path).resolve() != Path(named.path).resolve():
            raise UsageError(f"--deepspeed-config {config_path} differs from {named.flag} {named.path} in the "
                             "script's arguments; give one")
        config_path = named.path
    config = None
    if config_path and not args.no_preflight:
        hf_style = (named.flag if named else CONFIG_STYLES[args.config_style]) == HF_CONFIG_FLAG
        config = ConfigToCheck(config_path, script_args, hf_style)
    if slurm:
        base = LaunchPlan(python=python, hostfile="", script=script, script_args=script_args,
                          launcher_args=args.launcher_args, master_addr=args.master_addr,
                          master_port=args.master_port, module=args.module, deepspeed_config=args.deepspeed_config,
                          config_flag=CONFIG_STYLES[args.config_style])
        return launch_over_slurm(args, base, config, _show_preflight)
    hosts = select_hosts(load_hostfile(args.hostfile), args.include, args.exclude)
    place = launch_place([h.name for h in hosts])
    plan = LaunchPlan(python=python, hostfile=str(Path(args.hostfile).resolve()), script=script,
                      script_args=script_args, include=args.include, exclude=args.exclude,
                      launcher=args.launcher or "pdsh", launcher_args=args.launcher_args, master_addr=args.master_addr,
                      master_port=args.master_port, ssh_port=args.ssh_port, module=args.module,
                      deepspeed_config=args.deepspeed_config, config_flag=CONFIG_STYLES[args.config_style],
                      force_multi=len(hosts) == 1 and not place.local_only, no_ssh_check=place.local_only)
    if place.local_only and not plan.master_addr:
        plan.master_addr = "127.0.0.1"  # every rank runs here; DeepSpeed would ssh to ask `hostname -I`
    err = Console(stderr=True)
    if not args.no_preflight:
        checked = preflight(PreflightRequest(
            hosts=hosts, hostfile=args.hostfile, python=python, settings=ssh_settings(args), timeout_s=args.timeout,
            master_addr=args.master_addr, master_port=args.master_port, skip=args.skip, config=config,
            script=None if args.module else script), err)
        report = checked.report
        plan.master_addr, plan.master_port = checked.master_addr, checked.master_port
        _show_preflight(report, args.hostfile, err)
        if report.has_errors and not args.force:
            err.print(f"[bold red]not launching:[/] the preflight found {report.counts()['error']} error(s); "
                      "fix them (or pass --force to launch anyway)", soft_wrap=True)
            return int(ExitCode.PROBLEMS)
    argv = build_launch_line(plan)
    if args.print_only:
        print(shell_line(argv))
        return int(ExitCode.OK)
    err.print(Text.assemble(("launching: ", "bold"), shell_line(argv)), soft_wrap=True)
    exec_launch(argv)


def _check_launcher(args: argparse.Namespace, slurm: bool) -> None:
    """The launcher fits the transport; a launch needs a HOSTFILE or Slurm."""
    if not slurm and not args.hostfile:
        raise UsageError("give a HOSTFILE, or launch inside a Slurm allocation (or with --slurm): "
                         "clusterkit launch HOSTFILE -- train.py ARGS")
    if slurm and args.launcher not in (None, *SLURM_LAUNCHERS):
        raise UsageError(f"--launcher {args.launcher} under Slurm: use srun (the default) or slurm; for pdsh over "
                         "SSH give a HOSTFILE (and --no-slurm inside an allocation)")
    if not slurm and args.launcher == "srun":
        raise UsageError("--launcher srun needs Slurm: launch inside an allocation, or pass --slurm")


def _show_preflight(report: DoctorReport, hostfile: str, err: Console) -> None:
    """What failed (errors in full, other checks a line each), or one green line."""
    if report.failed:
        render_table(report, err, brief=True)
        if any(not f.is_error for f in report.failed):
            err.print(f"(clusterkit doctor {hostfile} shows every finding with its fix)", style="dim",
                      soft_wrap=True)
    else:
        err.print(Text.assemble(("preflight: ", "green"), summary_line(report)), soft_wrap=True)
