"""``clusterkit launch HOSTFILE -- train.py ARGS``: preflight, then DeepSpeed's launcher, over SSH or
under Slurm alike.

The nodes come from the flags once (:func:`~clusterkit.commands.flags.target_from_args`): a HOSTFILE
over SSH (this machine alone without SSH), or a Slurm allocation reached through srun. The preflight
is the doctor's survey and checks over those nodes (no workloads) plus the config check of the
DeepSpeed config the script will read. It also settles what DeepSpeed would otherwise guess at launch
time: the master address (tested from every node) and a master port that is free on the first host.
Then the nodes give the launch line (DeepSpeed's runner over pdsh, or srun running DeepSpeed's
per-node launcher), which is printed and, unless ``--print-only``, run in place of this process (as a
child where it runs in an allocation clusterkit asked for, released when it ends).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from clusterkit.cluster import LaunchStyle, Nodes, Target
from clusterkit.commands.common import (
    add_hostfile_arguments,
    add_ssh_arguments,
    add_trailing_args_parser,
    id_list,
    interpreter_path,
)
from clusterkit.commands.flags import opened, target_from_args
from clusterkit.commands.slurm import add_slurm_arguments
from clusterkit.core.flightrec import DEFAULT_BUFFER_SIZE, RUNS_ROOT
from clusterkit.core.launchline import (
    CONFIG_STYLES,
    HF_CONFIG_FLAG,
    LaunchPlan,
    config_in_args,
    deepspeed_launcher,
    shell_line,
)
from clusterkit.core.slurmlaunch import launch_intent, parse_interval
from clusterkit.errors import ClusterkitError, ExitCode, UsageError
from clusterkit.launch import (
    ConfigToCheck,
    Preflight,
    PreflightRequest,
    exec_launch,
    preflight,
    preflight_checks,
    run_launch,
)
from clusterkit.stacks.flightrec import prepare_recorder
from clusterkit.stacks.ship import place_hook
from clusterkit.ui.progress import NodeProgress
from clusterkit.ui.report import DoctorReport, render_table, summary_line

NO_NODES = ("give a HOSTFILE, or launch inside a Slurm allocation (or with --slurm): "
            "clusterkit launch HOSTFILE -- train.py ARGS")


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
    parser.add_argument("--no-stacks-hook", action="store_true",
                        help="leave out the stack hook (a sitecustomize first on the ranks' PYTHONPATH that lets "
                             "clusterkit stacks read each rank's stack on a signal, without ptrace rights)")
    parser.add_argument("--skip", type=id_list, default=[], metavar="IDS",
                        help="comma-separated doctor check ids/tags or config rule ids to leave out")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="per-node deadline for the preflight survey (default: 30)")
    parser.add_argument("--cpus-per-task", type=int, metavar="N",
                        help="under Slurm: CPUs for each node's task, shared by its ranks (default: all the job "
                             "holds on the node)")
    parser.add_argument("--no-flight-recorder", action="store_true",
                        help="leave torch's flight recorder off (default: on, each rank keeping its last "
                             f"{DEFAULT_BUFFER_SIZE} collectives, ~1 KiB each, dumped on request to "
                             f"{RUNS_ROOT}/JOB/flightrec on every node; read with `clusterkit flightrec`)")
    parser.add_argument("--flight-recorder-entries", type=int, default=DEFAULT_BUFFER_SIZE, metavar="N",
                        help=f"collectives each rank's flight recorder keeps (default: {DEFAULT_BUFFER_SIZE})")
    parser.add_argument("--checkpoint-every", metavar="DURATION",
                        help="under Slurm: how often the job checkpoints (30m, 2h), judged against the time limit")
    add_ssh_arguments(parser)
    add_slurm_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.flight_recorder_entries < 1:
        raise UsageError("--flight-recorder-entries must be at least 1 (or pass --no-flight-recorder)")
    script, script_args, python = _training_command(args)
    if args.checkpoint_every:
        try:
            parse_interval(args.checkpoint_every)
        except ValueError as exc:
            raise UsageError(f"--checkpoint-every: {exc}") from None
    target = target_from_args(args, nodes_needed=NO_NODES)
    launcher = _launcher(args.launcher, target)
    config = _config(args, script_args)
    if not args.no_preflight:
        preflight_checks(args.skip)  # an unknown id is a usage error before any node is asked
    plan = LaunchPlan(python=python, hostfile=str(Path(args.hostfile).resolve()) if args.hostfile else "",
                      script=script, script_args=script_args, include=args.include, exclude=args.exclude,
                      launcher=launcher, launcher_args=args.launcher_args,
                      master_addr=args.master_addr, master_port=args.master_port, module=args.module,
                      deepspeed_config=args.deepspeed_config, config_flag=CONFIG_STYLES[args.config_style])
    style = LaunchStyle(labelled=False, cwd=str(Path.cwd()), launcher_args=args.launcher_args,
                        cpus_per_task=args.cpus_per_task, outlives_nodes=args.print_only)
    err = Console(stderr=True)
    with opened(target) as nodes:
        if not args.no_preflight:
            checked = _preflight(args, nodes, plan, config, launcher, err)
            if checked.report.has_errors and not args.force:
                err.print(f"[bold red]not launching:[/] the preflight found {checked.report.counts()['error']} "
                          "error(s); fix them (or pass --force to launch anyway)", soft_wrap=True)
                return int(ExitCode.PROBLEMS)
            plan.master_addr, plan.master_port = checked.master_addr, checked.master_port
        if not args.print_only and not args.no_flight_recorder:
            style = _with_flight_recorder(args, nodes, style, err)
        if not args.print_only and not args.no_stacks_hook:
            style = _with_stacks_hook(nodes, style, args.timeout, err)
        line = nodes.launch_line(plan, nodes.hosts, style)
        if args.print_only:
            print(shell_line(line.argv))
            return int(ExitCode.OK)
        err.print(Text.assemble(("launching: ", "bold"), shell_line(line.argv)), soft_wrap=True)
        if line.while_open:
            return run_launch(line.argv, line.env)
        exec_launch(line.argv, line.env)


def _with_flight_recorder(args: argparse.Namespace, nodes: Nodes, style: LaunchStyle, err: Console) -> LaunchStyle:
    """``style`` with the flight recorder's hook on the ranks' path, installed on every node first."""
    if args.no_preflight:
        err.print("flight recorder: off with --no-preflight (it installs a hook on every node)", style="dim")
        return style
    setup = prepare_recorder(nodes, style.cwd, os.environ.get("PYTHONPATH"), args.timeout,
                             entries=args.flight_recorder_entries)
    if setup.failed:
        where = "; ".join(f"{host}: {why}" for host, why in setup.failed.items())
        err.print(f"[yellow]flight recorder: off[/] (its hook could not be written to {setup.directory} on "
                  f"{where}); the job runs without it", soft_wrap=True)
        return style
    read = shell_line(["clusterkit", "flightrec", *([args.hostfile] if args.hostfile else []), setup.job_id])
    err.print(Text.assemble(("flight recorder: ", "bold"), f"job {setup.job_id}, dumps in {setup.directory} on "
                            f"every node; after a hang: {read}"), soft_wrap=True)
    return dataclasses.replace(style, exports={**style.exports, **setup.exports})


def _with_stacks_hook(nodes: Nodes, style: LaunchStyle, timeout_s: float, err: Console) -> LaunchStyle:
    """``style`` with the stack hook's directory first on the ranks' PYTHONPATH (put on every node first);
    unchanged, with a note, where it cannot be (the job launches all the same)."""
    directory, why = place_hook(nodes, timeout_s)
    if directory is None:
        err.print(f"note: no stack hook in the ranks ({why}): clusterkit stacks will need ptrace rights to read them",
                  style="yellow", markup=False)
        return style
    return dataclasses.replace(style, pythonpath_first=(directory, *style.pythonpath_first))


def _training_command(args: argparse.Namespace) -> tuple[str, list[str], str]:
    """The script, its arguments and the training env's interpreter, each checked here first."""
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
    return script, script_args, python


def _launcher(asked: str | None, target: Target) -> str:
    """``--launcher``, or the default of the way the nodes are reached; one that cannot start ranks
    that way is a usage error."""
    choices = target.reach.launchers
    if asked is None:
        return choices[0]
    if asked.lower() not in choices:
        raise UsageError(f"--launcher {asked} {target.reach.how}: use {choices[0]} (the default) or "
                         f"{', '.join(choices[1:])}; a HOSTFILE means SSH, an allocation (or --slurm) Slurm, "
                         "and --no-slurm keeps SSH inside one")
    return asked.lower()


def _config(args: argparse.Namespace, script_args: list[str]) -> ConfigToCheck | None:
    """The DeepSpeed config the script will read (named once), to check unless --no-preflight."""
    config_path = args.deepspeed_config
    named = config_in_args(script_args)
    if named is not None:
        if config_path and Path(config_path).resolve() != Path(named.path).resolve():
            raise UsageError(f"--deepspeed-config {config_path} differs from {named.flag} {named.path} in the "
                             "script's arguments; give one")
        config_path = named.path
    if not config_path or args.no_preflight:
        return None
    hf_style = (named.flag if named else CONFIG_STYLES[args.config_style]) == HF_CONFIG_FLAG
    return ConfigToCheck(config_path, script_args, hf_style)


def _preflight(args: argparse.Namespace, nodes: Nodes, plan: LaunchPlan, config: ConfigToCheck | None,
               launcher: str, err: Console) -> Preflight:
    """The preflight over ``nodes``, its progress shown per node, its findings shown after."""
    intent = launch_intent(launcher, nodes.hosts, args.cpus_per_task, plan.script_args, args.checkpoint_every)
    request = PreflightRequest(python=plan.python, timeout_s=args.timeout, master_addr=args.master_addr,
                               master_port=args.master_port, skip=args.skip, config=config,
                               script=None if args.module else plan.script, intent=intent)
    with NodeProgress(nodes.names, f"preflight ({nodes.describe()})", err) as progress:
        checked = preflight(nodes, request, progress)
    _show_preflight(checked.report, _doctor_command(args), err)
    return checked


def _doctor_command(args: argparse.Namespace) -> str:
    """The doctor over the same nodes, for the full findings."""
    words = ["clusterkit", "doctor"]
    if args.hostfile:
        words.append(args.hostfile)
    for flag, value in (("--include", args.include), ("--exclude", args.exclude), ("--partition", args.partition),
                        ("--nodes", args.nodes), ("--nodelist", args.nodelist)):
        if value:
            words += [flag, value]
    if args.slurm:
        words.append("--slurm")
    return shell_line(words)


def _show_preflight(report: DoctorReport, doctor: str, err: Console) -> None:
    """What failed (errors in full, other checks a line each), or one green line."""
    if report.failed:
        render_table(report, err, brief=True)
        if any(not f.is_error for f in report.failed):
            err.print(f"({doctor} shows every finding with its fix)", style="dim", soft_wrap=True)
    else:
        err.print(Text.assemble(("preflight: ", "green"), summary_line(report)), soft_wrap=True)
