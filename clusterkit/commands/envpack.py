"""``clusterkit env pack | push | verify``: a training env packed once, on every node at the same path, proven.

They hang under ``clusterkit env`` (which, without a subcommand, still prints this machine's versions)
because they are about the same thing: the training env, first described, then shipped.

push and verify take the nodes from a HOSTFILE (over SSH), or from Slurm as doctor does (inside an
allocation without a HOSTFILE, or ``--slurm``): then every stage is one srun step and the archive goes
by sbcast. The target is built once (:func:`clusterkit.commands.flags.target_from_args`); the push
itself (:mod:`clusterkit.envpack.push`) is the same whichever transport reaches the nodes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from clusterkit.commands.common import add_hostfile_arguments, add_ssh_arguments
from clusterkit.commands.flags import opened, target_from_args
from clusterkit.commands.runs import add_save_arguments, check_run_arguments, compare_and_save
from clusterkit.commands.slurm import add_slurm_arguments, use_slurm
from clusterkit.core.findings import Finding, Outcome, Severity
from clusterkit.core.saved_run import SavedRun
from clusterkit.errors import ExitCode, UsageError

DEFAULT_OUTPUT = Path("~/.cache/clusterkit/envpack")


def register_subcommands(env_parser: Any) -> None:
    """Add pack/push/verify under the ``env`` parser."""
    sub = env_parser.add_subparsers(dest="env_command", metavar="{pack,push,verify}")
    pack = sub.add_parser("pack", help="pack a conda env or venv into a checksummed .tar.zst with a manifest",
                          description="Pack a conda env (conda-pack, zstd, threads) or a venv (tar, zstd) once. "
                                      "Refuses what cannot travel (editable installs, deleted conda files, a "
                                      "removed package cache) with the way out.")
    pack.add_argument("prefix", nargs="?", type=Path, help="the env's directory (default: --python's env)")
    pack.add_argument("--python", metavar="PATH", help="the env's interpreter instead of PREFIX")
    pack.add_argument("-o", "--output-dir", type=Path, default=DEFAULT_OUTPUT,
                      help=f"where the archive and its manifest go (default: {DEFAULT_OUTPUT})")
    pack.add_argument("--level", type=int, default=3, help="zstd level (default 3)")
    pack.add_argument("--threads", type=int, default=0, help="compression threads (default: every CPU)")
    pack.add_argument("--ignore-missing-files", action="store_true",
                      help="pack a conda env whose managed files were deleted, WITHOUT them (they are listed)")
    pack.add_argument("--allow-editable", action="store_true",
                      help="pack editable installs as they are (their code must exist on every node)")
    pack.add_argument("--allow-uncached", action="store_true",
                      help="pack conda packages whose package cache was removed (safe at the same path)")
    pack.add_argument("--json", action="store_true", help="print the manifest as JSON")
    pack.set_defaults(run=run_pack)
    for name, helptext in (("push", "broadcast a packed env to every node, unpack it at the same path, verify"),
                           ("verify", "check the env on every node against the head's manifest")):
        parser = sub.add_parser(name, help=helptext, description=helptext + ". The nodes: HOSTFILE over SSH, "
                                "or Slurm's (inside an allocation without a HOSTFILE, or --slurm): one srun step "
                                "per stage, the archive by sbcast")
        add_hostfile_arguments(parser, required=False)
        parser.add_argument("archive", nargs="?", metavar="ARCHIVE",
                            help="the .tar.zst from `clusterkit env pack` (or its .json)")
        parser.set_defaults(late_positionals=("hostfile", "archive"))
        parser.add_argument("--staging", metavar="DIR", help="where nodes keep the archive (default: "
                                                             "PREFIX/../.clusterkit-envpack)")
        parser.add_argument("--timeout", type=float, default=900, metavar="S",
                            help="per-node limit for unpacking (default 900)")
        parser.add_argument("--stall-timeout", type=float, default=30, metavar="S",
                            help="a hop that receives nothing this long is given up (default 30)")
        parser.add_argument("--json", action="store_true", help="print per-node outcomes as JSON")
        if name == "push":
            parser.add_argument("--dry-run", action="store_true", help="survey and say what would be done")
            parser.add_argument("--remove-archive", action="store_true",
                                help="delete each node's archive once unpacked (a rerun then resends)")
            parser.add_argument("--replace-existing", action="store_true",
                                help="replace what is at the prefix on a node even though clusterkit did not "
                                     "install it (it is moved aside to PREFIX.clusterkit-replaced-DATE, never "
                                     "deleted); without it such a node is refused")
        if name == "verify":
            add_save_arguments(parser)
        add_ssh_arguments(parser)
        add_slurm_arguments(parser)
        parser.set_defaults(run=run_push if name == "push" else run_verify)


def run_pack(args: argparse.Namespace) -> int:
    from clusterkit.envpack.pack import PackOptions, env_prefix_of, pack_env

    if args.prefix is None and args.python is None:
        raise UsageError("say which env: clusterkit env pack PREFIX (or --python PATH)")
    prefix = args.prefix if args.prefix is not None else env_prefix_of(args.python)
    console = Console(stderr=True)
    options = PackOptions(output_dir=args.output_dir.expanduser(), level=args.level, threads=args.threads,
                          ignore_missing_files=args.ignore_missing_files, allow_editable=args.allow_editable,
                          allow_uncached=args.allow_uncached)
    with console.status(f"packing {prefix} ..."):
        archive, manifest = pack_env(prefix, options)
    if args.json:
        print(manifest.to_json())
        return int(ExitCode.OK)
    for note in manifest.notes:
        console.print(f"[yellow]note[/]: {note}", highlight=False, soft_wrap=True)
    for dropped in manifest.dropped_files:
        console.print(f"  [yellow]left out[/]: {dropped}", highlight=False, soft_wrap=True)
    print(f"{archive}  ({manifest.kind} env {manifest.prefix}, {manifest.size / 1e6:.1f} MB, sha256 "
          f"{manifest.sha256[:16]}..., {manifest.packed_with}, {manifest.pack_seconds:.1f}s)")
    return int(ExitCode.OK)


def _load(args: argparse.Namespace) -> tuple[Path, Any]:
    from clusterkit.envpack.pack import Manifest, manifest_path

    usage = f"clusterkit env {args.env_command} HOSTFILE ARCHIVE"
    if not args.archive:
        raise UsageError(f"which env? {usage} (or ARCHIVE alone inside a Slurm allocation)")
    if not args.hostfile and not use_slurm(args, None):
        if not _looks_like_archive(Path(args.archive)):  # the one word given is the HOSTFILE
            raise UsageError(f"which env? {usage}: {args.archive} is taken as the HOSTFILE; add the ARCHIVE that "
                             "`clusterkit env pack` made")
        raise UsageError(f"say which nodes: {usage}, or run it inside a Slurm allocation (or with --slurm)")
    archive = Path(args.archive)
    if archive.suffix == ".json":
        archive = archive.with_name(archive.name[:-len(".json")])
    if archive.is_dir():
        raise UsageError(f"{archive} is a directory, not an archive: name the .tar.zst that `clusterkit env pack` "
                         "made (it prints the path)")
    if not archive.is_file():
        raise UsageError(f"{archive}: no such archive (make one with `clusterkit env pack`)")
    if not manifest_path(archive).is_file():
        raise UsageError(f"{archive} has no manifest beside it ({manifest_path(archive).name}): copy it along with "
                         "the archive, or pack the env again")
    return archive, Manifest.load(manifest_path(archive))


def _looks_like_archive(path: Path) -> bool:
    """An archive (or its manifest) by name or by what lies beside it, not a hostfile."""
    return path.name.endswith((".tar.zst", ".tzst", ".json")) or path.is_dir() or \
        path.with_name(path.name + ".json").is_file()


def _push_command(args: argparse.Namespace) -> str:
    """The command that pushes again the way this one reached its nodes (in fixes)."""
    return f"clusterkit env push {'HOSTFILE' if args.hostfile else '--slurm'} ARCHIVE"


def _finish(report: Any, args: argparse.Namespace, title: str) -> int:
    from clusterkit.ui.envpush import outcome_text

    if args.json:
        print(json.dumps({h: {"status": r.status, "actions": r.actions, "error": r.error, "fix": r.fix}
                          for h, r in report.nodes.items()}, indent=2))
    else:
        Console().print(outcome_text(report, title), soft_wrap=True)
    return int(ExitCode.PROBLEMS if report.failed else ExitCode.OK)


def run_push(args: argparse.Namespace) -> int:
    from clusterkit.envpack.push import PushOptions, push_env
    from clusterkit.ui.envpush import RelayView

    archive, manifest = _load(args)
    target = target_from_args(args)
    options = PushOptions(staging_dir=args.staging, dry_run=args.dry_run, stall_s=args.stall_timeout,
                          unpack_timeout_s=args.timeout, remove_archive=args.remove_archive,
                          replace_existing=args.replace_existing, push_command=_push_command(args))
    with opened(target) as nodes, RelayView(manifest.size) as view:
        report = push_env(archive, manifest, nodes, options, view)
    title = f"env push: {manifest.prefix} ({manifest.archive})" + (" (dry run: nothing changed)" if args.dry_run
                                                                  else "")
    return _finish(report, args, title)


def run_verify(args: argparse.Namespace) -> int:
    from clusterkit.envpack.push import PushOptions, push_env
    from clusterkit.ui.envpush import PhaseLines

    check_run_arguments(args)
    archive, manifest = _load(args)
    target = target_from_args(args)
    options = PushOptions(staging_dir=args.staging, verify_only=True, stall_s=args.stall_timeout,
                          push_command=_push_command(args))
    started = time.time()
    with opened(target) as nodes:
        report = push_env(archive, manifest, nodes, options, PhaseLines())
    _save_verify(args, report, manifest.prefix, started)
    return _finish(report, args, f"env verify: {manifest.prefix} ({manifest.archive})")


def _save_verify(args: argparse.Namespace, report: Any, prefix: str, started: float) -> None:
    """The verify kept in the history: one finding per node (its status, or its error and fix)."""
    findings = [Finding("env-verify", Severity.ERROR, Outcome.PASS if r.ok else Outcome.FAIL, host, prefix,
                        r.error or r.status, "", r.fix or "") for host, r in report.nodes.items()]
    compare_and_save(args, SavedRun("env-verify", hosts=list(report.nodes), findings=findings, started_at=started),
                     Console(stderr=True))
