"""Read and write small files in a node's home over SSH: backed up, atomic, with fixed modes.

Paths are relative to the remote home (``.ssh/authorized_keys``). A write first copies the current
file to ``<file>.clusterkit-<timestamp>-<writer>.bak`` (kept, never deleted), uploads the new content
next to it under a name of its own, sets the mode and renames it into place, so a node never sees a
half-written file. Names carry a random writer token: homes shared between nodes (NFS) see several
writers, and none may take another's temporary file or overwrite another's backup.

Every write is a compare-and-swap: it replaces the file only while it still holds what the caller
read, else :class:`ChangedMeanwhile` is raised and nothing is replaced (read again and redo the edit).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shlex
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from clusterkit.cluster.remote import RemoteError

if TYPE_CHECKING:
    from fabric import Connection

_MISSING = "@@clusterkit-missing@@"
_CHANGED_EXIT = 7


class ChangedMeanwhile(RemoteError):
    """The file changed between our read and our write (another writer on a shared home)."""


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


def _digest_command(path: str) -> str:
    """Shell that prints the sha256 of ``path``'s content, or MISSING."""
    return f"if [ -e {path} ]; then sha256sum < {path} | cut -d' ' -f1; else echo MISSING; fi"


def _digest(text: str | None) -> str:
    return "MISSING" if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_home_file(conn: Connection, relative: str, text: str, mode: int = 0o600, timeout_s: float = 20,
                    *, expected: str | bool | None = False) -> str | None:
    """Replace ``~/relative`` atomically; returns the backup's path (None if there was no file).

    ``expected``: the content the caller read (None: the file did not exist); the write happens only
    while the file still holds it. ``False`` writes whatever is there now.
    """
    writer = uuid.uuid4().hex[:8]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    parent = relative.rsplit("/", 1)[0] if "/" in relative else ""
    tmp = f"{relative}.clusterkit-tmp-{writer}"
    backup = f"{relative}.clusterkit-{stamp}-{writer}.bak"
    prepare = f"umask 077; mkdir -p {home_path(parent)} && chmod 700 {home_path(parent)}" if parent else "true"
    conn.run(prepare, hide=True, timeout=timeout_s)
    conn.put(io.BytesIO(text.encode("utf-8")), remote=tmp)
    target, tmp_path, backup_path = home_path(relative), home_path(tmp), home_path(backup)
    guard = ""
    if expected is not False:
        assert expected is None or isinstance(expected, str)
        guard = (f'if [ "$({_digest_command(target)})" != {_digest(expected)} ]; then rm -f {tmp_path}; '
                 f"exit {_CHANGED_EXIT}; fi; ")
    result = conn.run(
        f"{guard}had=0; if [ -e {target} ]; then cp -p {target} {backup_path} && had=1 || exit 5; fi; "
        f"chmod {mode:o} {tmp_path} && mv -f {tmp_path} {target} && echo $had",
        hide=True, warn=True, timeout=timeout_s)
    if result.exited == _CHANGED_EXIT:
        raise ChangedMeanwhile(f"~/{relative} on {conn.host} changed while clusterkit was editing it "
                               "(another writer on a shared home?)", fix="rerun; nothing was replaced")
    if result.exited != 0:
        conn.run(f"rm -f {tmp_path}", hide=True, warn=True, timeout=timeout_s)
        raise RemoteError(f"cannot write ~/{relative} on {conn.host}: {result.stderr.strip() or result.exited}")
    return f"~/{backup}" if result.stdout.strip().endswith("1") else None


def ensure_ssh_dir(conn: Connection, timeout_s: float = 20) -> list[str]:
    """~/.ssh exists with mode 0700 (sshd refuses keys otherwise); returns what was changed."""
    result = conn.run(
        'd="$HOME/.ssh"; if [ ! -d "$d" ]; then mkdir -m 700 "$d" 2>/dev/null && echo created; '
        'elif [ "$(stat -c %a "$d")" != 700 ]; then chmod 700 "$d" && echo chmod; fi; [ -d "$d" ]',
        hide=True, timeout=timeout_s)
    return {"created": ["created ~/.ssh (0700)"], "chmod": ["set ~/.ssh to 0700"]}.get(result.stdout.strip(), [])


#: ``edit(current text or None) -> (new text, what changed)``; new text None: nothing to change.
Edit = Callable[[str | None], tuple[str | None, str]]


def edit_home_file(conn: Connection, relative: str, edit: Edit, mode: int, dry_run: bool,
                   attempts: int = 5) -> tuple[str, str | None] | None:
    """Read ``~/relative``, apply ``edit``, write the result back (compare-and-swap, retried when
    another writer got there first). Returns what changed and the backup path, or None when the file
    already said it all. A dry run reads and edits, and writes nothing."""
    for _ in range(attempts):
        current = read_home_file(conn, relative)
        text, what = edit(current)
        if text is None:
            return None
        if dry_run:
            return what, None
        try:
            return what, write_home_file(conn, relative, text, mode, expected=current)
        except ChangedMeanwhile:
            time.sleep(0.1 + random.random() / 5)
    raise ChangedMeanwhile(f"~/{relative} on {conn.host} kept changing while clusterkit edited it "
                           f"({attempts} tries)", fix="find the other writer (another clusterkit run?), then rerun")


def edit_local_file(path: Path, edit: Edit, mode: int, dry_run: bool) -> tuple[str, str | None] | None:
    """:func:`edit_home_file` for a file on this machine: backed up, replaced atomically."""
    try:
        current: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    text, what = edit(current)
    if text is None:
        return None
    if dry_run:
        return what, None
    writer = uuid.uuid4().hex[:8]
    backup = None
    if current is not None:
        backup = path.with_name(f"{path.name}.clusterkit-{time.strftime('%Y%m%dT%H%M%S')}-{writer}.bak")
        shutil.copy2(path, backup)
    tmp = path.with_name(f"{path.name}.clusterkit-tmp-{writer}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    tmp.chmod(mode)
    tmp.replace(path)
    return what, (str(backup) if backup is not None else None)
