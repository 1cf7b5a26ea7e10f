"""Read and write small files in a node's home over SSH: backed up, atomic, with fixed modes.

Paths are relative to the remote home (``.ssh/authorized_keys``). A write first copies the current
file to ``<file>.clusterkit-<timestamp>.bak`` (kept, never deleted), uploads the new content next to
it, sets the mode and renames it into place, so a node never sees a half-written file.
"""

from __future__ import annotations

import io
import shlex
import time
from typing import TYPE_CHECKING

from clusterkit.remote import RemoteError

if TYPE_CHECKING:
    from fabric import Connection

_MISSING = "@@clusterkit-missing@@"


def home_path(relative: str) -> str:
    """A shell word for ``$HOME/relative`` (quoted, with $HOME expanded by the remote shell)."""
    return f'"$HOME"/{shlex.quote(relative)}'


def read_home_file(conn: Connection, relative: str, timeout_s: float = 20) -> str | None:
    """The file's text, or None when it does not exist."""
    path = home_path(relative)
    result = conn.run(f"if [ -e {path} ]; then cat {path}; else echo {_MISSING}; fi",
                      hide=True, warn=True, timeout=timeout_s)
    if result.exited != 0:
        raise RemoteError(f"cannot read ~/{relative} on {conn.host}: {result.stderr.strip()}")
    text = str(result.stdout)
    return None if text.strip() == _MISSING else text


def write_home_file(conn: Connection, relative: str, text: str, mode: int = 0o600,
                    timeout_s: float = 20) -> str | None:
    """Replace ``~/relative`` atomically; returns the backup's path (None if there was no file)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    parent = relative.rsplit("/", 1)[0] if "/" in relative else ""
    tmp = f"{relative}.clusterkit-tmp"
    backup = f"{relative}.clusterkit-{stamp}.bak"
    prepare = f"umask 077; mkdir -p {home_path(parent)} && chmod 700 {home_path(parent)}" if parent else "true"
    conn.run(prepare, hide=True, timeout=timeout_s)
    conn.put(io.BytesIO(text.encode("utf-8")), remote=tmp)
    target, tmp_path, backup_path = home_path(relative), home_path(tmp), home_path(backup)
    result = conn.run(
        f"had=0; if [ -e {target} ]; then cp -p {target} {backup_path} && had=1 || exit 5; fi; "
        f"chmod {mode:o} {tmp_path} && mv -f {tmp_path} {target} && echo $had",
        hide=True, warn=True, timeout=timeout_s)
    if result.exited != 0:
        raise RemoteError(f"cannot write ~/{relative} on {conn.host}: {result.stderr.strip() or result.exited}")
    return f"~/{backup}" if result.stdout.strip().endswith("1") else None


def ensure_ssh_dir(conn: Connection, timeout_s: float = 20) -> list[str]:
    """~/.ssh exists with mode 0700 (sshd refuses keys otherwise); returns what was changed."""
    result = conn.run(
        'd="$HOME/.ssh"; if [ ! -d "$d" ]; then mkdir -m 700 "$d" && echo created; '
        'elif [ "$(stat -c %a "$d")" != 700 ]; then chmod 700 "$d" && echo chmod; fi',
        hide=True, timeout=timeout_s)
    return {"created": ["created ~/.ssh (0700)"], "chmod": ["set ~/.ssh to 0700"]}.get(result.stdout.strip(), [])
