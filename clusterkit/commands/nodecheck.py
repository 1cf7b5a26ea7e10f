"""``clusterkit nodecheck``: this node's checks as Slurm's health check, prolog or epilog; and how to install it.

``nodecheck run --hook H`` is what slurmd runs (through the scripts ``nodecheck install`` prints): the
node checks of this machine only, under a hard time budget, draining the node on an error and
resuming a node it drained once clean. With ``--quiet`` it prints nothing (slurmd's hooks should
not); every run appends a line to the node's log either way.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from clusterkit import __version__
from clusterkit.core.findings import Outcome, Severity
from clusterkit.errors import ClusterkitError, UsageError
from clusterkit.nodecheck.install import DEFAULT_DIR, DEFAULT_INTERVAL_S, InstallOptions, install_text, write_scripts
from clusterkit.nodecheck.policy import Act
from clusterkit.nodecheck.profile import PROFILES, Hook, profile_for
from clusterkit.nodecheck.runner import (
    DEFAULT_LOG,
    RunOptions,
    RunResult,
    Watchdog,
    log_line,
    run_nodecheck,
    this_node,
    write_log,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "nodecheck", help="this node's checks as Slurm's health check / prolog / epilog: drain on error, resume once "
                          "fixed")
    sub = parser.add_subparsers(dest="nodecheck_command", metavar="SUBCOMMAND")
    run_parser = sub.add_parser("run", help="check this node once and drain or resume it in Slurm",
                                description="Checks this node only (no SSH, no cluster checks) under the hook's "
                                            "time budget; an error drains it with a 'clusterkit:' reason, a clean run "
                                            "resumes it if clusterkit drained it. Exit code: 0, except a prolog on a "
                                            "faulty node (1: Slurm requeues the job elsewhere).")
    run_parser.add_argument("--hook", choices=[h.value for h in Hook], default=Hook.HEALTH.value,
                            help="which Slurm hook this is: what is checked and the time budget "
                                 f"({', '.join(f'{h.value} {p.budget_s:g}s' for h, p in PROFILES.items())})")
    run_parser.add_argument("--dry-run", action="store_true", help="change nothing in Slurm; say what would be done")
    run_parser.add_argument("--quiet", action="store_true", help="print nothing (the installed hook scripts)")
    run_parser.add_argument("--node", help="Slurm's name for this node (default: $SLURMD_NODENAME, else the "
                                           "short hostname)")
    run_parser.add_argument("--log", default=DEFAULT_LOG, metavar="FILE", help=f"append the run's line here "
                                                                              f"(default: {DEFAULT_LOG})")
    run_parser.add_argument("--budget", type=float, metavar="SECONDS",
                            help="a shorter time budget than the hook's own")
    run_parser.add_argument("--version", action="version", version=f"clusterkit {__version__}")
    run_parser.set_defaults(run=run)
    install_parser = sub.add_parser("install", help="print the slurm.conf lines and hook scripts (or --write them)")
    install_parser.add_argument("--python", default=sys.executable,
                                help="the interpreter the hooks run clusterkit with (default: this one)")
    install_parser.add_argument("--dir", default=DEFAULT_DIR, help=f"where the scripts go (default: {DEFAULT_DIR})")
    install_parser.add_argument("--interval", type=int, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                                help=f"HealthCheckInterval (default: {DEFAULT_INTERVAL_S})")
    install_parser.add_argument("--log", default=DEFAULT_LOG, metavar="FILE", help="the node's log file")
    install_parser.add_argument("--budget", type=float, metavar="SECONDS", help="a shorter budget for every hook")
    install_parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                                help="a variable every hook script exports (repeatable)")
    install_parser.add_argument("--write", action="store_true", help="write the scripts into --dir instead of "
                                                                     "printing everything")
    install_parser.set_defaults(run=install)
    parser.set_defaults(run=lambda args: parser.print_help() or 2)


def _budget(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise UsageError(f"--budget must be a positive number of seconds, not {value:g}")
    return value


def run(args: argparse.Namespace) -> int:
    hook = Hook(args.hook)
    profile = profile_for(hook, _budget(args.budget))
    options = RunOptions(profile=profile, node=args.node or this_node(), dry_run=args.dry_run, log_path=args.log)

    def cut_off() -> None:  # the last resort: something outlived every deadline inside the run
        result = RunResult(node=options.node, hook=hook, error=f"cut off: the run outlived its {profile.budget_s:g}s "
                                                              "budget; nothing changed")
        result.wall_s = profile.budget_s
        write_log(options.log_path, log_line(result, options.dry_run))
        if not args.quiet:
            print(f"clusterkit: nodecheck {hook.value} cut off after {profile.budget_s:g}s", file=sys.stderr)
        os._exit(result.exit_code)

    with Watchdog(profile.budget_s, cut_off):
        result = run_nodecheck(options)
    if not args.quiet:
        _print(result, args.dry_run, options.log_path)
    return result.exit_code


def _print(result: RunResult, dry_run: bool, log_path: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    style = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
    failed = [f for f in result.findings if f.outcome is Outcome.FAIL]
    passed = sum(1 for f in result.findings if f.outcome is Outcome.PASS)
    console.print(f"[bold]clusterkit nodecheck {result.hook.value}[/] on {escape(result.node)}: "
                  f"{len(failed) + len(result.hung)} problem(s), {passed} passed, {result.wall_s:.2f}s wall, "
                  f"{result.cpu_s:.2f}s cpu")
    for finding in sorted(failed, key=lambda f: f.severity.rank):
        console.print(f"  [{style[finding.severity]}]{finding.severity.value}[/] {finding.check_id}"
                      f"{' ' + escape(finding.where) if finding.where else ''}: {escape(finding.message)}")
    for name in result.hung:
        console.print(f"  [red]error[/] {name} facts did not finish within the section deadline (hung)")
    decision = result.decision
    if decision is not None:
        if decision.act is Act.NOTHING:
            done = "nothing to do"
        elif dry_run:
            done = f"would {decision.act.value}"
        else:
            done = decision.act.past if result.acted else f"{decision.act.value} failed"
        reason = f" with reason '{escape(decision.reason)}'" if decision.reason else ""
        console.print(f"Slurm: {done}{reason}: {escape(decision.why)}")
    if result.error:
        console.print(f"[red]error:[/] {escape(result.error)}")
    if result.log_error:
        console.print(f"[yellow]{escape(result.log_error)}[/]")
    else:
        console.print(f"[dim]logged in {escape(log_path)}[/]")


def install(args: argparse.Namespace) -> int:
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--env takes NAME=VALUE, not {item!r}")
        env[name] = value
    if args.interval <= 0:
        raise UsageError(f"--interval must be a positive number of seconds, not {args.interval}")
    options = InstallOptions(python=args.python, directory=args.dir, interval_s=args.interval, log_path=args.log,
                             budget_s=_budget(args.budget), env=env)
    if args.write:
        try:
            for path in write_scripts(options):
                print(f"wrote {path}")
        except OSError as exc:
            raise ClusterkitError(f"cannot write the hook scripts into {args.dir}: {exc.strerror or exc}") from None
        return 0
    print(install_text(options), end="")
    return 0
