"""What doctor and bench share about saved runs: the flags (``--no-save-run``, ``--name``, ``--compare``,
``--noise``), comparing the run with a saved one, then saving it into the history."""

from __future__ import annotations

import argparse

from rich.console import Console

from clusterkit.core.change_report import NOTHING_COMPARED, comparison_findings
from clusterkit.core.findings import Finding
from clusterkit.core.run_diff import DEFAULT_TOLERANCE, compare_runs
from clusterkit.core.saved_run import SavedRun
from clusterkit.errors import UsageError
from clusterkit.history import History, is_run_file


def _share(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a share such as 0.5 or 50%") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: between 0 and 1 (or 0% and 100%)")
    return value


def add_save_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", metavar="NAME", help="save this run under NAME (e.g. good) in the history")
    parser.add_argument("--no-save-run", action="store_true",
                        help="do not keep this run in the history (~/.clusterkit/runs)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--compare``, ``--noise`` and the saving flags."""
    add_save_arguments(parser)
    parser.add_argument("--compare", nargs="?", const="", default=None, metavar="RUN",
                        help="report what changed since a saved run, per node: a name (good), an id from "
                             "`clusterkit history list`, or a file; default the run named good, else the last")
    parser.add_argument("--noise", type=_share, default=DEFAULT_TOLERANCE, metavar="SHARE",
                        help="with --compare: a figure fell when it is lower by more than this share "
                             f"(default {DEFAULT_TOLERANCE:g}, set from the run-to-run noise measured)")


def check_run_arguments(args: argparse.Namespace) -> None:
    """The saving flags agree, before anything runs."""
    if getattr(args, "no_save_run", False) and getattr(args, "name", None):
        raise UsageError("--name saves the run: it cannot go with --no-save-run")
    history = History()
    if getattr(args, "name", None):
        history.check_name(args.name)
    compare = getattr(args, "compare", None)
    if not getattr(args, "no_save_run", False) or (compare is not None and not is_run_file(compare)):
        history.names()  # a broken names.json stops the run here, not after it


def compare_and_save(args: argparse.Namespace, run: SavedRun, console: Console) -> list[Finding]:
    """With ``--compare``, the findings of what changed since the saved run; then the run saved (unless
    ``--no-save-run``). The reference is read before this run is saved: "the last run" is the one before."""
    check_run_arguments(args)
    history = History()
    findings: list[Finding] = []
    if getattr(args, "compare", None) is not None:
        reference, against = history.reference(args.compare or None, run.label)
        findings = comparison_findings(compare_runs(reference, run, args.noise), against)
        changed = [f for f in findings if f.outcome.value == "fail"]
        if any(f.check_id == NOTHING_COMPARED for f in findings):
            summary = "nothing compared (no facts or figures in both runs)"
        else:
            summary = f"{len(changed)} change(s), listed with the findings" if changed else "nothing changed"
        console.print(f"compared with {against}: {summary}", highlight=False)
    if not args.no_save_run:
        try:
            entry = history.save(run, args.name)
        except OSError as exc:
            console.print(f"run not saved: {exc}", style="yellow", highlight=False)
        else:
            named = f" as {', '.join(entry.names)}" if entry.names else ""
            console.print(f"run saved{named}: {entry.id} ({entry.path})", style="dim", highlight=False)
    return findings
