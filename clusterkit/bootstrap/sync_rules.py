"""What ``bootstrap --sync DIR`` never copies to the nodes, and which directories it will not sync at all.

A private key, a credential or clusterkit's own state copied to another machine is lost to its owner:
every node would hold the head's private key, and a copied ``~/.clusterkit/home-id`` makes nodes look
as if they shared one home. So these are left out wherever they sit in the synced tree, and a home
directory (or one holding it) is synced only when asked for by name (``--sync-home``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PrivateEntry:
    """An rsync exclude pattern (no ``/``: any depth; a trailing ``/``: directories only) and why."""

    pattern: str
    why: str


_KEYS = "private keys and SSH trust stay on each machine"
_CREDENTIALS = "credentials"
_STATE = "clusterkit's state on each machine"

#: Never copied by code-sync, wherever they sit in the synced directory.
PRIVATE_ENTRIES = (
    PrivateEntry(".ssh/", _KEYS),
    *(PrivateEntry(name, _KEYS) for name in ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk",
                                             "id_ed25519_sk")),
    PrivateEntry(".gnupg/", _KEYS),
    *(PrivateEntry(name, _CREDENTIALS) for name in (
        ".aws/", ".azure/", ".kube/", ".docker/", ".config/gcloud/", ".config/gh/", ".password-store/",
        ".local/share/keyrings/", ".huggingface/", ".cache/huggingface/token", ".netrc", ".pgpass",
        ".git-credentials", ".pypirc", ".npmrc", ".vault-token")),
    PrivateEntry(".clusterkit/", _STATE),
    PrivateEntry(".cache/clusterkit/", _STATE),  # packed envs, per machine
    # Written on each machine by the deepspeed-env step, with that machine's values; backups likewise.
    PrivateEntry(".deepspeed_env", _STATE),
    PrivateEntry("*.clusterkit-*.bak", _STATE),
    PrivateEntry("*.clusterkit-tmp-*", _STATE),
)


def rsync_excludes(entries: Iterable[PrivateEntry] = PRIVATE_ENTRIES) -> list[str]:
    """``--exclude PATTERN`` arguments for rsync."""
    return [arg for entry in entries for arg in ("--exclude", entry.pattern)]


def parse_hidden(rsync_output: str) -> list[str]:
    """Paths rsync's ``--debug=FILTER1`` says it left out (``[sender] hiding file a/id_rsa because of
    pattern id_rsa``), in its order."""
    hidden = []
    for line in rsync_output.splitlines():
        if line.startswith("[sender] hiding "):
            what = line[len("[sender] hiding "):].split(" because of pattern ", 1)[0]
            hidden.append(what.split(" ", 1)[1] if " " in what else what)
    return hidden


def without_hidden(rsync_output: str) -> list[str]:
    """rsync's itemized lines, without its ``--debug`` lines."""
    return [line for line in rsync_output.splitlines() if line.strip() and not line.startswith("[")]


def holds_home(source: Path, home: Path) -> bool:
    """Whether ``source`` is the home directory or a directory above it (``/home``, ``/``)."""
    source, home = source.resolve(), home.resolve()
    return source == home or home.is_relative_to(source)


def home_refusal(source: Path, home: Path) -> str | None:
    """Why ``--sync source`` is refused without ``--sync-home``, or None when it is not a home."""
    if not holds_home(source, home):
        return None
    resolved = source.resolve()
    shown = str(source) if str(source) == str(resolved) else f"{source} ({resolved})"
    what = "is your home directory" if resolved == home.resolve() else f"holds your home directory {home}"
    return (f"--sync {shown}: that {what}, which is not code: copying it would overwrite each node's own "
            "files there and carry what must stay on this machine (~/.ssh with its private keys, "
            "~/.clusterkit, credentials). Sync the project directory instead (--sync ~/project), or pass "
            "--sync-home to copy it anyway: private keys, credentials and clusterkit's state are never copied")
