"""``clusterkit history list | mark NAME [RUN] | show RUN``: the saved runs of doctor and bench.

Runs are saved into ``~/.clusterkit/runs`` by doctor and bench (unless ``--no-save-run``); ``mark``
names one (``good`` is the one ``--compare`` takes by default), ``show`` prints one.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from clusterkit.core.findings import counts
from clusterkit.core.hostlist import compress
from clusterkit.core.saved_run import run_to_json
from clusterkit.history import GOOD, History, load


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "history", help="the saved doctor and bench runs: list them, name one (good), show one",
        description="doctor and bench save every run into ~/.clusterkit/runs ($CLUSTERKIT_HOME/runs), capped "
                    "(oldest unnamed runs dropped first); doctor --compare and bench --compare report what "
                    "changed since one of them.")
    commands = parser.add_subparsers(dest="history_command", metavar="{list,mark,show}", required=True)
    listing = commands.add_parser("list", help="every saved run, oldest first, with its names")
    listing.set_defaults(run=run_list)
    mark = commands.add_parser("mark", help=f"name a run (default the newest); {GOOD!r} is what --compare takes")
    mark.add_argument("name", metavar="NAME")
    mark.add_argument("run_ref", nargs="?", metavar="RUN", help="a run id (or its start) or a name")
    mark.set_defaults(run=run_mark)
    show = commands.add_parser("show", help="one run: what it was, its hosts, findings and figures")
    show.add_argument("run_ref", metavar="RUN", help="a run id (or its start), a name, or a file")
    show.add_argument("--json", action="store_true", help="print the saved run's JSON document")
    show.set_defaults(run=run_show)


def run_list(args: argparse.Namespace) -> int:
    history = History()
    entries = history.entries()
    console = Console()
    if not entries:
        console.print(f"no saved runs in {history.root}", highlight=False)
        return 0
    table = Table(title=f"saved runs in {history.root} (cap {history.cap_bytes >> 20} MiB)", title_justify="left")
    for header in ("id", "run", "names", "size"):
        table.add_column(header)
    for entry in entries:
        table.add_row(entry.id, entry.label, ", ".join(entry.names), f"{entry.size / 1024:.0f} KiB")
    console.print(table)
    return 0


def run_mark(args: argparse.Namespace) -> int:
    entry = History().mark(args.name, args.run_ref)
    Console().print(f"{entry.id} ({entry.label}) is now {args.name!r}", highlight=False)
    return 0


def run_show(args: argparse.Namespace) -> int:
    ref: str = args.run_ref
    if "/" in ref or ref.endswith(".json"):
        from pathlib import Path

        run, title = load(Path(ref)), ref
    else:
        entry = History().find(ref)
        run, title = load(entry.path), entry.title
    if args.json:
        print(json.dumps(run_to_json(run), indent=2))
        return 0
    console = Console()
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.started_at))
    c = counts(run.findings)
    console.print(f"{run.label} run {title}, {when}, clusterkit {run.clusterkit_version}", highlight=False)
    console.print(f"hosts: {compress(run.hosts) or '(none)'}; facts from {len(run.facts)}; "
                  f"{c['error']} errors, {c['warning']} warnings, {c['pass']} passed", highlight=False)
    for figure in run.figures:
        value = f"not measured ({figure.failed})" if figure.failed else f"{figure.value:.4g} {figure.unit}"
        console.print(f"  {figure.subject}: {figure.metric} {value}", highlight=False)
    return 0
