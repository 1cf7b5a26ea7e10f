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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from clusterkit.commands.common import add_ssh_arguments, add_trailing_args_parser, id_list, ssh_settings
from clusterkit.errors import ClusterkitError, ExitCode, UsageError
from clusterkit.inventory import ActiveHost, load_hostfile, select_hosts
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
from clusterkit.survey import AUTO_PORT


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
    parser.add_argument("hostfile", metavar="HOSTFILE", help="DeepSpeed hostfile (HOST slots=N per line)")
    parser.add_argument("--include", default="", metavar="SPEC", help="DeepSpeed --include: nodes/slots to use")
    parser.add_argument("--exclude", default="", metavar="SPEC", help="DeepSpeed --exclude: nodes/slots to leave out")
    parser.add_argument("--python", metavar="PATH",
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
    parser.add_argument("--launcher", default="pdsh", help="DeepSpeed multi-node launcher (default: pdsh)")
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
    add_ssh_arguments(parser)
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
    hosts = select_hosts(load_hostfile(args.hostfile), args.include, args.exclude)
    config_path = args.deepspeed_config
    named = config_in_args(script_args)
    if named is not None:
        if config_path and Path(config_path).resolve() != Path(named.path).resolve():
            raise UsageError(f"--deepspeed-config {config_path} differs from {named.flag} {named.path} in the "
                             "script's arguments; give one")
        config_path = named.path
    place = launch_place([h.name for h in hosts])
    plan = LaunchPlan(python=python, hostfile=str(Path(args.hostfile).resolve()), script=script,
                      script_args=script_args, include=args.include, exclude=args.exclude,
                      launcher=args.launcher, launcher_args=args.launcher_args, master_addr=args.master_addr,
                      master_port=args.master_port, ssh_port=args.ssh_port, module=args.module,
                      deepspeed_config=args.deepspeed_config, config_flag=CONFIG_STYLES[args.config_style],
                      force_multi=len(hosts) == 1 and not place.local_only, no_ssh_check=place.local_only)
    if place.local_only and not plan.master_addr:
        plan.master_addr = "127.0.0.1"  # every rank runs here; DeepSpeed would ssh to ask `hostname -I`
    err = Console(stderr=True)
    if not args.no_preflight:
        config = None
        if config_path:
            hf_style = (named.flag if named else plan.config_flag) == HF_CONFIG_FLAG
            config = ConfigToCheck(config_path, script_args, hf_style)
        report, master = preflight(args, hosts, python, config, err)
        plan.master_addr, plan.master_port = master
        if report.has_errors and not args.force:
            err.print(f"[bold red]not launching:[/] the preflight found {report.counts()['error']} error(s); "
                      "fix them (or pass --force to launch anyway)", soft_wrap=True)
            return int(ExitCode.PROBLEMS)
    argv = build_launch_line(plan)
    if args.print_only:
        print(shell_line(argv))
        return int(ExitCode.OK)
    err.print(Text.assemble(("launching: ", "bold"), shell_line(argv)), soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # DeepSpeed's runner takes this process over, signals and exit code included


@dataclass(frozen=True)
class ConfigToCheck:
    """The DeepSpeed config the script will read, and how it gets it."""

    path: str
    script_args: list[str]
    #: Passed as the HF Trainer's ``--deepspeed FILE``: "auto" values come from the script's arguments.
    hf_trainer: bool


def preflight(args: argparse.Namespace, hosts: list[ActiveHost], python: str, config: ConfigToCheck | None,
              err: Console) -> tuple[DoctorReport, tuple[str | None, int | None]]:
    """Survey and judge the nodes, check the config; print what failed. Returns the report and the
    master address and port to launch with (those the survey tested)."""
    from clusterkit.checks import load_checks
    from clusterkit.checks.registry import select_checks
    from clusterkit.commands.doctor import judge_cluster
    from clusterkit.dsconfig.rules import load_rules
    from clusterkit.facts import Unavailable
    from clusterkit.survey import SurveyOptions, survey_cluster

    load_checks()
    rules = load_rules()
    # The line names --master_addr, so DeepSpeed's own guess of it (this check's subject) does not apply.
    skip = [name for name in args.skip if name not in rules] + ["master-address-suspicious"]
    specs = select_checks(skip=skip)
    options = SurveyOptions(python=python, timeout_s=args.timeout, master_addr=args.master_addr,
                            master_port=AUTO_PORT if args.master_port is None else args.master_port)
    started = time.time()
    facts, probes = survey_cluster(hosts, ssh_settings(args), options, err)
    report = judge_cluster(specs, hosts, facts, probes, started, args.hostfile)
    if config is not None:
        report.findings += [f for f in _config_findings(config, hosts, facts, args.hostfile)
                            if f.check_id not in args.skip]
    report.duration_s = time.time() - started
    if report.failed:
        render_table(report, err, brief=True)
        if any(not f.is_error for f in report.failed):
            err.print(f"(clusterkit doctor {args.hostfile} shows every finding with its fix)", style="dim",
                      soft_wrap=True)
    else:
        err.print(Text.assemble(("preflight: ", "green"), summary_line(report)), soft_wrap=True)
    master = probes.master
    if isinstance(master, Unavailable):
        return report, (args.master_addr, args.master_port)
    address = master.address if not isinstance(master.address, Unavailable) else args.master_addr
    return report, (address, master.port)


def _config_findings(config: ConfigToCheck, hosts: list[ActiveHost], facts: Any, hostfile: str) -> list[Any]:
    from clusterkit.dsconfig.check import check_config
    from clusterkit.dsconfig.load import load_ds_config
    from clusterkit.dsconfig.resources import resources_from_facts
    from clusterkit.dsconfig.rules import Runner
    from clusterkit.dsconfig.topology import topology_from_hosts

    report = check_config(load_ds_config(config.path), topology=topology_from_hosts(hosts, hostfile),
                          trainer_argv=config.script_args,
                          runner=Runner.HF_TRAINER if config.hf_trainer else Runner.DEEPSPEED,
                          resources=resources_from_facts(facts, "the preflight survey"))
    return list(report.findings)
