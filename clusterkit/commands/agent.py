"""``clusterkit agent ...``: run the node agent here, exactly as doctor runs it on each node.

Useful to see what a node reports (``clusterkit agent collect``) without SSH.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agent", help="run the node agent locally (what doctor ships to every node); prints one JSON line",
        description="Runs clusterkit's node agent in this process: `collect`, `ssh-mesh --hosts a,b`, "
                    "`listen --port P`, `connect --host H --port P`.")
    parser.add_argument("agent_args", nargs=argparse.REMAINDER, help="agent command and its flags")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clusterkit.node.agent import main

    return main(args.agent_args or ["--help"])
