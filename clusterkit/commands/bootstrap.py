"""``clusterkit bootstrap HOSTFILE``: all-to-all passwordless SSH, pdsh, code and .deepspeed_env.

The steps and their order come from ``playbooks/bootstrap.yaml``; see :mod:`clusterkit.bootstrap`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from clusterkit.commands.common import add_hostfile_arguments, add_ssh_arguments, interpreter_path, ssh_settings
from clusterkit.core.inventory import load_hostfile, select_hosts
from clusterkit.errors import ExitCode, UsageError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bootstrap",
        help="set up passwordless SSH between all nodes, pdsh, code and .deepspeed_env",
        description="Take the nodes of HOSTFILE to a state where `deepspeed --hostfile HOSTFILE` works: keys "
                    "and known_hosts, all-to-all passwordless SSH, pdsh, code synced to the same path, and a "
                    "correct ~/.deepspeed_env. Every step checks first and only applies what is missing, so "
                    "reruns are safe and resume after a failure.",
    )
    add_hostfile_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="connect and check, print every action, change nothing")
    parser.add_argument("--python", metavar="PATH", type=interpreter_path,
                        help=f"training interpreter (its bin/ goes first in PATH; default: {sys.executable})")
    parser.add_argument("--sync", metavar="DIR", type=Path,
                        help="mirror DIR to the same absolute path on every node (skipped on a shared FS); "
                             "private keys, credentials and clusterkit's state are never copied")
    parser.add_argument("--sync-home", action="store_true",
                        help="allow --sync of your home directory (or a directory holding it), which is "
                             "refused otherwise")
    parser.add_argument("--install-packages", action="store_true",
                        help="install missing pdsh with the OS package manager (root or passwordless sudo)")
    parser.add_argument("--playbook", metavar="FILE", help="another playbook (default: playbooks/bootstrap.yaml)")
    add_ssh_arguments(parser, password=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clusterkit.bootstrap.context import BootstrapContext, terminal_password_prompt
    from clusterkit.bootstrap.playbook import load_playbook
    from clusterkit.bootstrap.runner import run_playbook, step_needs, succeeded
    from clusterkit.bootstrap.sync_rules import home_refusal
    from clusterkit.core.launchsite import launch_place
    from clusterkit.ui.bootstrap import RichBootstrapView, summary_table

    hosts = select_hosts(load_hostfile(args.hostfile), args.include, args.exclude)
    steps = load_playbook(args.playbook, step_needs())
    if args.sync is not None and not args.sync.is_dir():
        raise UsageError(f"--sync {args.sync}: not a directory on this machine")
    if args.sync is not None and not args.sync_home and (refusal := home_refusal(args.sync, Path.home())):
        raise UsageError(refusal)
    if args.sync_home and args.sync is None:
        raise UsageError("--sync-home allows --sync of a home directory; give --sync DIR too")
    python = args.python or sys.executable
    if not os.access(python, os.X_OK) or not Path(python).is_file():
        raise UsageError(f"--python {python}: no such interpreter on this machine. DeepSpeed's runner starts "
                         "every rank with the interpreter it runs under, so the env must be here and at the same "
                         "path on every node")
    place = launch_place([h.name for h in hosts])
    if place.local_only:
        print(f"{hosts[0].name} is this machine: DeepSpeed launches a one-host job here without SSH, pdsh or "
              ".deepspeed_env, so there is nothing to set up. `clusterkit doctor` checks this machine.")
        return int(ExitCode.OK)
    console = Console(stderr=True)
    settings = ssh_settings(args)
    if args.dry_run:  # trust new host keys for this look only; known_hosts and the trust log stay as they are
        settings = replace(settings, record_trust=False)
    ctx = BootstrapContext(hosts=hosts, settings=settings, python=python, view=RichBootstrapView(console),
                           dry_run=args.dry_run,
                           install_packages=args.install_packages, sync_dir=args.sync, head_entry=place.entry,
                           python_named=args.python is not None,
                           password_prompt=terminal_password_prompt if args.ask_password else None)
    reports = run_playbook(ctx, steps)
    console.print()
    out = Console()
    out.print(summary_table(ctx, reports), soft_wrap=True)
    if not succeeded(reports):
        out.print("[bold red]bootstrap did not finish on every node[/]: fix what is listed above and rerun "
                  "(finished steps are skipped).")
        return int(ExitCode.PROBLEMS)
    if args.dry_run:
        out.print("[yellow]dry run[/]: nothing was changed.")
        return int(ExitCode.OK)
    python_flag = f" --python {shlex.quote(python)}" if args.python else ""
    hostfile = shlex.quote(args.hostfile)
    # Commands on lines of their own, never wrapped: they are meant to be copied.
    out.print("[bold green]ready.[/] Next, check the cluster, then launch:")
    out.print(f"  clusterkit doctor {hostfile}{python_flag}", soft_wrap=True, highlight=False)
    out.print(f"  clusterkit launch {hostfile}{python_flag} -- train.py", soft_wrap=True, highlight=False)
    return int(ExitCode.OK)
