"""The OpenSSH command-line form of SSH settings, for what runs ``ssh`` itself: rsync, pdsh, node-to-node
hops. It never prompts (BatchMode) and never hangs on a dead node (ConnectTimeout); host keys are
checked against known_hosts as the ssh client always does."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from clusterkit.cluster.remote.ssh import SshSettings


def ssh_argv(settings: SshSettings) -> list[str]:
    """``ssh`` with the options that make it non-interactive and bounded, plus port, user and key."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(settings.connect_timeout_s))}"]
    if settings.port:
        argv += ["-p", str(settings.port)]
    if settings.user:
        argv += ["-l", settings.user]
    if settings.identity_file:
        argv += ["-i", str(Path(settings.identity_file).expanduser())]
    return argv


def rsync_rsh(settings: SshSettings) -> str:
    """The ``rsync -e`` value."""
    return " ".join(shlex.quote(arg) for arg in ssh_argv(settings))


def pdsh_environment(settings: SshSettings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for ``pdsh -R ssh`` to log in as these settings say (pdsh reads them from here)."""
    env = dict(os.environ if base is None else base)
    env["PDSH_RCMD_TYPE"] = "ssh"
    env["PDSH_SSH_ARGS_APPEND"] = " ".join(ssh_argv(settings)[1:])
    return env
