"""``clusterkit checks``: list every check with its id, severity, tags and what it looks for."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from clusterkit.checks import load_checks


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("checks", help="list the doctor's checks (ids and tags for --only/--skip)")
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    specs = sorted(load_checks().values(), key=lambda s: (s.scope, s.id))
    if args.json:
        print(json.dumps([{"id": s.id, "severity": s.severity.value, "scope": s.scope, "tags": list(s.tags),
                           "summary": s.summary, "why": s.why, "fix": s.fix} for s in specs], indent=2))
        return 0
    table = Table(title=f"{len(specs)} checks", title_justify="left", expand=True)
    for name in ("id", "severity", "scope", "tags"):
        table.add_column(name, no_wrap=True)
    table.add_column("summary")
    for s in specs:
        table.add_row(s.id, s.severity.value, s.scope, ",".join(s.tags), s.summary)
    Console().print(table)
    return 0
