"""``clusterkit checks``: list every check with its id, severity, tags and what it looks for."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console, Group
from rich.padding import Padding
from rich.text import Text

from clusterkit.checks import load_checks

_SEVERITY_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}
_SCOPES = {"node": "on every node", "launch": "on the launching machine", "cluster": "across nodes"}


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
    console = Console()
    scopes = {scope: [s for s in specs if s.scope == scope] for scope in _SCOPES}
    console.print(Text(f"{len(specs)} checks: " + ", ".join(f"{len(scopes[scope])} {where}"
                                                             for scope, where in _SCOPES.items())
                       + " (--only/--skip take ids or tags)", style="bold"))
    # A block per check rather than a table: at 80 columns, or piped, a table cuts ids and tags short.
    for scope, chosen in scopes.items():
        console.print(Text(f"\nchecks {_SCOPES[scope]}", style="underline"))
        for spec in chosen:
            head = Text.assemble((spec.id, "bold"), "  ",
                                 (spec.severity.value, _SEVERITY_STYLE[spec.severity.value]),
                                 ("  " + ",".join(spec.tags), "dim"))
            console.print(Group(head, Padding(Text(spec.summary), (0, 0, 0, 4), expand=False)), soft_wrap=False)
    return 0
