"""Command-line entry point: argument parsing and the one top-level error handler.

Each command lives in ``clusterkit/commands/<name>.py`` and exposes ``register(subparsers)``, which
adds its parser and sets ``run(args) -> int``. Heavy imports (fabric, torch, textual) stay inside
the commands so ``clusterkit --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from clusterkit import __version__
from clusterkit.errors import ClusterkitError, ExitCode

COMMAND_MODULES = (
    "doctor",
    "env",
    "checks",
    "bootstrap",
    "config",
    "estimate",
    "launch",
    "bench",
    "history",
    "agent",
    "slurm",
    "monitor",
    "stacks",
    "flightrec",
    "nodecheck",
)

EPILOG = """exit codes:
  0  clean: nothing at error severity
  1  problems found (doctor errors, a failed bootstrap step, a config that will not run,
     a launch stopped by its preflight)
  2  usage or input error (bad flag, hostfile, config); nothing was changed
  3  clusterkit crashed (a bug); rerun with CLUSTERKIT_DEBUG=1 and report the traceback
130  interrupted
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterkit",
        description="Bare GPU machines to a working multi-node DeepSpeed cluster: "
                    "bootstrap, doctor, config check, memory estimate, launch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clusterkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:  # a command that fails to import is a bug, never a missing command
        importlib.import_module(f"clusterkit.commands.{name}").register(subparsers)
    return parser


def place_late_positionals(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """Positionals given after options (``env push HOSTFILE --json ARCHIVE``), which argparse leaves over
    when an optional positional comes first. A command names its positionals in ``late_positionals``;
    they are filled from the right, so one value is the last of them. Returns what is still unplaced.
    """
    slots: tuple[str, ...] = getattr(args, "late_positionals", ())
    if not slots:
        return extra
    given = [getattr(args, slot) for slot in slots if getattr(args, slot) is not None]
    late = [word for word in extra if not word.startswith("-")]
    values = given + late
    if len(values) > len(slots):
        return extra
    for slot in slots:
        setattr(args, slot, None)
    for slot, value in zip(slots[len(slots) - len(values):], values, strict=True):
        setattr(args, slot, value)
    return [word for word in extra if word.startswith("-")]


def main(argv: Sequence[str] | None = None, build: Callable[[], argparse.ArgumentParser] = build_parser) -> int:
    """Run clusterkit; returns the process exit code (see EPILOG). ``build``: a parser of fewer commands
    (Slurm's node hooks import only theirs)."""
    debug = os.environ.get("CLUSTERKIT_DEBUG") == "1"
    if debug:  # library logs (paramiko's handshake tracebacks) are silent otherwise
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    parser = build()
    try:
        args, extra = parser.parse_known_args(argv)
        extra = place_late_positionals(args, extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse already printed usage and the error
        code = exc.code if isinstance(exc.code, int) else ExitCode.USAGE
        return int(code)
    if not getattr(args, "run", None):
        parser.print_help()
        return int(ExitCode.USAGE)
    try:
        return int(args.run(args))
    except ClusterkitError as exc:
        if debug:
            traceback.print_exc()
        print(f"clusterkit: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("clusterkit: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return int(ExitCode.OK)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"clusterkit: internal error: {type(exc).__name__}: {exc} "
              "(set CLUSTERKIT_DEBUG=1 for the traceback)", file=sys.stderr)
        return int(ExitCode.INTERNAL)


if __name__ == "__main__":
    raise SystemExit(main())
