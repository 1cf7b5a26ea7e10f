"""Put the workload scripts on every node at one path, without clusterkit in the training env.

The scripts (``clusterkit/workloads/scripts/*.py``: standard library plus torch/DeepSpeed) travel as
a content-addressed bundle, like the agent (:func:`clusterkit.remote.ship_agent`), into a private
per-user directory on each node: ``${TMPDIR:-/tmp}/clusterkit-<uid>/workloads-<digest>/``.

Why there and not under the launch directory: it needs nothing from the user's tree (which may be
read-only, or a shared filesystem where every node would race to write the same files), a node
that already has this exact bundle is not written again, and the directory is owned by the user
(checked, since /tmp is shared). DeepSpeed's launcher hands every node the same script path, so the
path must be the same everywhere: each node reports where the bundle landed and a difference (a
different uid or TMPDIR on some node) is an error that names the nodes and suggests ``--workdir``,
a directory to use on every node instead (a shared or launch-relative path).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import shlex
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clusterkit.cluster.shell import kill_by_run_id_command
from clusterkit.errors import ClusterkitError
from clusterkit.progress import NodeProgress
from clusterkit.remote import HostResult, RemoteError, SshSettings, connect, fan_out
from clusterkit.workloads.run import Cleanup

if TYPE_CHECKING:
    from fabric import Connection

SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


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


def is_local(hosts: list[str]) -> bool:
    """A launch DeepSpeed runs on this machine only: one host, and it is this machine."""
    from clusterkit.launchsite import launch_place

    return bool(hosts) and launch_place(hosts).local_only


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


def ship_to(conn: Connection, timeout_s: float, workdir: str | None = None, python: str | None = None) -> str:
    """Unpack the bundle on one node unless it is already there; returns the directory on that node."""
    digest = bundle_digest()
    probe = conn.run(
        f'd={_base_dir_shell(workdir)}; mkdir -p -m 700 "$d" || exit 3; '
        '[ -O "$d" ] || { echo "$d is not owned by $(id -un)" >&2; exit 4; }; '
        f'a="$d/workloads-{digest}"; if [ -s "$a/workload_io.py" ] && [ -O "$a" ]; then echo "present $a"; '
        'else echo "missing $a"; fi',
        hide=True, warn=True, timeout=timeout_s)
    if probe.exited != 0 or not probe.stdout.strip():
        raise RemoteError(f"cannot prepare the workload directory: {(probe.stderr or probe.stdout).strip()}",
                          fix="pass --workdir with a directory you own on every node")
    state, path = str(probe.stdout).split()[-2:]
    if state == "missing":
        zip_path = f"{path}.{os.getpid()}.zip"
        conn.put(io.BytesIO(bundle_zip()), remote=zip_path)
        q, z = shlex.quote(path), shlex.quote(zip_path)
        fallback = f" || command -v {shlex.quote(python)}" if python else ""
        unpack = conn.run(
            f'PY="$(command -v python3{fallback})" || {{ echo "no python3 on PATH" >&2; exit 127; }}; '
            f'rm -rf {q}.tmp && "$PY" -m zipfile -e {z} {q}.tmp && rm -f {z} && chmod -R go-rwx {q}.tmp '
            f'&& {{ mv -T {q}.tmp {q} 2>/dev/null || rm -rf {q}.tmp; }}',
            hide=True, warn=True, timeout=timeout_s)
        if unpack.exited != 0:
            raise RemoteError(f"cannot unpack the workload scripts: {unpack.stderr.strip()}")
    return path


def ship(hosts: list[str], settings: SshSettings, timeout_s: float = 30.0, workdir: str | None = None,
         python: str | None = None, progress: NodeProgress | None = None, shared: bool = False) -> Shipped:
    """Ship the bundle to every host in parallel; the one directory they all hold it in.

    ``shared``: ``workdir`` is on a filesystem every node mounts at the same path, so the bundle is
    written there once, from this machine, without SSH. Raises ClusterkitError naming the hosts that
    failed, or that hold it at a different path.
    """
    if workdir and not workdir.startswith("/"):
        workdir = str(Path(workdir).absolute())  # pdsh runs the same words on every node: make it absolute
    if shared:
        if not workdir:
            raise ClusterkitError("a shared workdir needs --workdir DIR (a directory every node mounts)")
        return Shipped(ship_local(workdir), {})
    if is_local(hosts):
        path = ship_local(workdir)
        return Shipped(path, {hosts[0]: HostResult(hosts[0], value=path)})

    def task(host: str) -> str:
        with connect(host, settings) as conn:
            return ship_to(conn, timeout_s, workdir, python)

    results = fan_out(hosts, task, timeout_s + settings.connect_timeout_s + 5, progress, settings)
    failed = {h: r for h, r in results.items() if not r.ok}
    if failed:
        detail = "; ".join(f"{h}: {r.error}" for h, r in failed.items())
        raise ClusterkitError(f"could not put the workload scripts on {len(failed)} node(s): {detail}")
    paths = {h: str(r.value) for h, r in results.items()}
    distinct = sorted(set(paths.values()))
    if len(distinct) > 1:
        where = ", ".join(f"{h}: {p}" for h, p in paths.items())
        raise ClusterkitError(f"the workload scripts landed at different paths ({where}); DeepSpeed's launcher "
                              "gives every node the same path: pass --workdir DIR with a directory usable on "
                              "every node (e.g. under the launch directory)")
    return Shipped(distinct[0], dict(results))


def remote_cleanup(hosts: list[str], settings: SshSettings, timeout_s: float = 20.0) -> Cleanup:
    """A clean-up for :func:`clusterkit.workloads.run.supervise`: kills a run's processes on every node."""

    def cleanup(run_id: str) -> dict[str, str]:
        command = kill_by_run_id_command(run_id)

        def task(host: str) -> str:
            if host in LOCAL_NAMES:
                import subprocess

                done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout_s,
                                      check=False)
                return done.stdout.strip()
            with connect(host, settings) as conn:
                return str(conn.run(command, hide=True, warn=True, timeout=timeout_s).stdout).strip()

        results = fan_out(hosts, task, timeout_s + settings.connect_timeout_s, None, settings)
        return {h: (str(r.value) if r.ok else f"clean-up failed: {r.error}") for h, r in results.items()}

    return cleanup
