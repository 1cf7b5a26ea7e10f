"""``python -m clusterkit.nodecheck run|install ...``: ``clusterkit nodecheck`` without importing every other
command (what the hook scripts run: a health check on every node at once should start fast)."""

from __future__ import annotations

import argparse
import sys

from clusterkit import __version__
from clusterkit.cli import main


def build_parser() -> argparse.ArgumentParser:
    from clusterkit.commands import nodecheck

    parser = argparse.ArgumentParser(prog="clusterkit")
    parser.add_argument("--version", action="version", version=f"clusterkit {__version__}")
    nodecheck.register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


if __name__ == "__main__":
    sys.exit(main(["nodecheck", *sys.argv[1:]], build_parser))
