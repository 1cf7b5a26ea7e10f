"""Put the workload scripts on every node at one path, without clusterkit in the training env.

The scripts (``clusterkit/workloads/scripts/*.py``: standard library plus torch/DeepSpeed) travel as
a content-addressed bundle, like the agent, into a private per-user directory on each node:
``${TMPDIR:-/tmp}/clusterkit-<uid>/workloads-<digest>/``. One command per node through whatever
transport the nodes have (:meth:`clusterkit.cluster.Nodes.run`) unpacks the bundle, which travels inside
the command (some 30 KB), where it is missing, and says where it is.

Why there and not under the launch directory: it needs nothing from the user's tree (which may be
read-only, or a shared filesystem where every node would race to write the same files), a node
that already has this exact bundle is not written again, and the directory is owned by the user
(checked, since /tmp is shared). DeepSpeed's launcher hands every node the same script path, so the
path must be the same everywhere: each node reports where the bundle landed and a difference (a
different uid or TMPDIR on some node) is an error that names the nodes and suggests ``--workdir``,
a directory to use on every node instead (a shared or launch-relative path).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import os
import shlex
import zipfile
from dataclasses import dataclass
from pathlib import Path

from clusterkit.cluster import CommandOutput, HostResult, Nodes, ProgressListener
from clusterkit.errors import ClusterkitError

SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"


@functools.cache
def bundle_files() -> dict[str, bytes]:
    """The scripts as shipped: every ``scripts/*.py``, by file name."""
    return {path.name: path.read_bytes() for path in sorted(SCRIPTS_DIR.glob("*.py"))}


def bundle_digest() -> str:
    digest = hashlib.sha256()
    for name, data in bundle_files().items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def bundle_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in bundle_files().items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data,
                        compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _base_dir_shell(workdir: str | None) -> str:
    """Shell word for the directory holding the bundles (expanded on the node)."""
    if workdir:
        return shlex.quote(workdir)
    return '"${TMPDIR:-/tmp}/clusterkit-$(id -u)"'


@dataclass
class Shipped:
    """Where the scripts are (the same path on every node) and each node's result."""

    directory: str
    per_host: dict[str, HostResult[str]]

    def script(self, name: str) -> str:
        return f"{self.directory}/{name}"


def ship_local(workdir: str | None = None) -> str:
    """Unpack the bundle on this machine (for a local launch); returns its directory."""
    import tempfile

    base = Path(workdir) if workdir else Path(tempfile.gettempdir()) / f"clusterkit-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    if base.stat().st_uid != os.getuid():
        raise ClusterkitError(f"{base} is not owned by you; pass --workdir with a directory of your own")
    target = base / f"workloads-{bundle_digest()}"
    if not (target / "workload_io.py").is_file():
        staging = base / f".workloads-{bundle_digest()}.{os.getpid()}"
        staging.mkdir(mode=0o700, exist_ok=True)
        for name, data in bundle_files().items():
            (staging / name).write_bytes(data)
        try:
            staging.rename(target)
        except OSError:  # another run got there first: its copy is identical
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return str(target)


#: What the ship command prints before the directory the bundle is in.
PLACED = "@@ck-workloads@@"
#: How long one node may take to unpack the bundle.
SHIP_TIMEOUT_S = 60.0


def ship_command(workdir: str | None, python: str | None) -> str:
    """Per node: the bundle's directory, unpacked from the inline zip when missing; prints ``PLACED path``."""
    q = shlex.quote
    blob = base64.b64encode(bundle_zip()).decode("ascii")
    fallback = f" || command -v {q(python)}" if python else ""
    return (f'd={_base_dir_shell(workdir)}; mkdir -p -m 700 "$d" || exit 3; '
            '[ -O "$d" ] || { echo "$d is not owned by $(id -un)" >&2; exit 4; }; '
            f'a="$d/workloads-{bundle_digest()}"; '
            'if [ ! -s "$a/workload_io.py" ] || [ ! -O "$a" ]; then '
            f'PY="$(command -v python3{fallback})" || {{ echo "no python3 on PATH" >&2; exit 127; }}; '
            't="$a.${CLUSTERKIT_NODE:-node}.$$"; z="$t.zip"; '
            f'echo {blob} | base64 -d > "$z" && "$PY" -m zipfile -e "$z" "$t" && rm -f "$z" '
            '&& chmod -R go-rwx "$t" && { mv -T "$t" "$a" 2>/dev/null || rm -rf "$t"; } || exit 5; fi; '
            f'echo {PLACED} "$a"')


def placed_at(result: HostResult[CommandOutput]) -> tuple[str | None, str | None]:
    """(the directory a node holds the bundle in, or None and why not) from its ship command."""
    output = result.value
    if not result.ok or output is None:
        return None, result.error
    for line in output.stdout.splitlines():
        if line.startswith(PLACED):
            return line[len(PLACED):].strip(), None
    return None, f"{output.tail(2)} (exit {output.exit_code})"


def ship(nodes: Nodes, *, workdir: str | None = None, python: str | None = None, shared: bool = False,
         progress: ProgressListener | None = None, timeout_s: float = SHIP_TIMEOUT_S) -> Shipped:
    """The bundle on every node of ``nodes``; the one directory they all hold it in.

    ``shared``: ``workdir`` is on a filesystem every node mounts at the same path, so the bundle is
    written there once, from this machine, through no transport. Raises ClusterkitError naming the
    nodes that failed, or that hold it at a different path.
    """
    if workdir and not workdir.startswith("/"):
        workdir = str(Path(workdir).absolute())  # every node gets the same words: make it absolute
    if shared:
        if not workdir:
            raise ClusterkitError("a shared workdir needs --workdir DIR (a directory every node mounts)")
        return Shipped(ship_local(workdir), {})
    results = nodes.run(ship_command(workdir, python), timeout_s, progress=progress)
    paths: dict[str, str] = {}
    failed: dict[str, str] = {}
    for host, result in results.items():
        path, why = placed_at(result)
        if path is None:
            failed[host] = why or "no answer"
        else:
            paths[host] = path
    if failed:
        detail = "; ".join(f"{h}: {why}" for h, why in failed.items())
        raise ClusterkitError(f"could not put the workload scripts on {len(failed)} node(s): {detail}")
    distinct = sorted(set(paths.values()))
    if len(distinct) > 1:
        where = ", ".join(f"{h}: {p}" for h, p in paths.items())
        raise ClusterkitError(f"the workload scripts landed at different paths ({where}); DeepSpeed's launcher "
                              "gives every node the same path: pass --workdir DIR with a directory usable on "
                              "every node (e.g. under the launch directory)")
    return Shipped(distinct[0], {h: HostResult(h, value=p) for h, p in paths.items()})
