"""Flags shared by the commands that reach nodes over SSH."""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

from clusterkit.errors import UsageError
from clusterkit.remote import SshSettings


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


def ssh_settings(args: argparse.Namespace) -> SshSettings:
    """Build SshSettings from parsed flags; asks for the password at most once."""
    password = None
    env_var = getattr(args, "password_env", None)
    if env_var:
        if env_var not in os.environ:
            raise UsageError(f"--password-env {env_var}: that environment variable is not set")
        password = os.environ[env_var]
    elif getattr(args, "ask_password", False):
        password = getpass.getpass("SSH password for the nodes (used for first contact only, not stored): ")
    return SshSettings(user=args.user, port=args.ssh_port, identity_file=args.identity, password=password,
                       trust_new_hosts=args.trust_new_hosts, connect_timeout_s=args.connect_timeout)
