"""Flags shared by the commands that reach nodes over SSH."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clusterkit.cluster.remote import SshSettings
from clusterkit.errors import UsageError

HOSTFILE_HELP = "DeepSpeed hostfile (HOST slots=N per line; file order is node rank)"


def add_hostfile_arguments(parser: Any, *, positional: bool = True, required: bool = True,
                           group: Any = None) -> None:
    """HOSTFILE (a positional, or ``--hostfile H``) and DeepSpeed's ``--include``/``--exclude``.

    ``group``: where ``--hostfile`` goes (a mutually exclusive group, say); the filters go on the parser.
    """
    if positional:
        parser.add_argument("hostfile", metavar="HOSTFILE", nargs=None if required else "?", help=HOSTFILE_HELP)
    else:
        (group or parser).add_argument("--hostfile", metavar="H", help=HOSTFILE_HELP)
    parser.add_argument("--include", default="", metavar="SPEC",
                        help="DeepSpeed's --include: the NODE[:SLOT,...][@NODE...] to use")
    parser.add_argument("--exclude", default="", metavar="SPEC",
                        help="DeepSpeed's --exclude: the NODE[:SLOT,...][@NODE...] to leave out")


def add_ssh_arguments(parser: Any, password: bool = False) -> None:
    """--user/--ssh-port/--identity/--connect-timeout/--trust-new-hosts (and the password flags)."""
    group = parser.add_argument_group("ssh")
    group.add_argument("--user", help="SSH user on the nodes (default: ~/.ssh/config, then your user)")
    group.add_argument("--ssh-port", type=int, metavar="PORT", help="SSH port (default: ~/.ssh/config or 22)")
    group.add_argument("--identity", metavar="KEYFILE", help="private key to log in with")
    group.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="give up on a node that does not answer SSH within this time (default: 10)")
    group.add_argument("--trust-new-hosts", action="store_true",
                       help="accept host keys not yet in ~/.ssh/known_hosts, add them there and log them "
                            "in ~/.clusterkit/trusted-host-keys.log (a changed key is still refused)")
    if password:
        group.add_argument("--ask-password", action="store_true",
                           help="prompt once for the SSH password of nodes that do not take your key yet")
        group.add_argument("--password-env", metavar="VAR",
                           help="read that SSH password from environment variable VAR (never stored)")


def interpreter_path(text: str) -> str:
    """``--python`` values: made absolute against the current directory (symlinks kept: a venv's
    python is one). The path travels to every node and into ``.deepspeed_env``, where a relative one
    would be read against whatever directory a command happens to run in."""
    return str(Path(text).expanduser().absolute())


def id_list(text: str) -> list[str]:
    """``--only``/``--skip`` values: comma-separated ids, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def ssh_settings(args: argparse.Namespace) -> SshSettings:
    """Build SshSettings from parsed flags. ``--ask-password`` prompts later, and only when a node
    refuses the key (see BootstrapContext.ensure_password)."""
    password = None
    env_var = getattr(args, "password_env", None)
    if env_var:
        if env_var not in os.environ:
            raise UsageError(f"--password-env {env_var}: that environment variable is not set")
        password = os.environ[env_var]
    # A dry run changes nothing, known_hosts included: a host key it trusts is not recorded.
    return SshSettings(user=args.user, port=args.ssh_port, identity_file=args.identity, password=password,
                       trust_new_hosts=args.trust_new_hosts, connect_timeout_s=args.connect_timeout,
                       record_trust=not getattr(args, "dry_run", False))


class TrailingArgsParser(argparse.ArgumentParser):
    """Keeps everything after the first ``--`` verbatim in ``trainer_args`` (the training command).

    argparse alone cannot: a ``nargs="*"`` positional is satisfied early and the rest is rejected, and
    ``argparse.REMAINDER`` swallows this command's own flags when they follow a positional.
    """

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        tail: list[str] = []
        if "--" in argv:
            cut = argv.index("--")
            argv, tail = argv[:cut], argv[cut + 1:]
        parsed, extras = super().parse_known_args(argv, namespace)
        parsed.trainer_args = tail
        return parsed, extras


def add_trailing_args_parser(subparsers: Any, name: str, **kwargs: Any) -> TrailingArgsParser:
    """``subparsers.add_parser`` for a command that takes a training command after ``--``."""
    # add_parser has no per-parser class argument; swap the action's class for this one call.
    saved = subparsers._parser_class
    subparsers._parser_class = TrailingArgsParser
    try:
        parser: TrailingArgsParser = subparsers.add_parser(name, **kwargs)
    finally:
        subparsers._parser_class = saved
    return parser
