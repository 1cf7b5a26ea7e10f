"""Files clusterkit needs on nodes, placed in its per-node cache as the agent is: py-spy's binary for
``clusterkit stacks`` and the stack hook for ``clusterkit launch``.

Each file goes to ``${TMPDIR:-/tmp}/clusterkit-UID/NAME`` where NAME carries the file's digest, so a copy
once there (checked by size and sha256 when it was put, through :meth:`Nodes.put`) serves every later run
and a new version never meets an old copy. Nodes that hold it already are sent nothing.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clusterkit.cluster import GroupResult, HostResult, Nodes
from clusterkit.cluster.remote.transfer import RemoteFile

_CACHE = "@@ck-cache"
#: The environment variable naming the py-spy binary to ship (else the one beside this Python, else PATH's).
PYSPY_ENV = "CLUSTERKIT_PY_SPY"
HOOK_SOURCE = Path(__file__).resolve().parents[1] / "node" / "stacks_hook.py"


@dataclass(frozen=True)
class CachedFile:
    """A file of this machine and its name in the nodes' cache (``NAME-DIGEST`` or ``DIR-DIGEST/NAME``)."""

    source: Path
    name: str
    executable: bool = False

    @property
    def size(self) -> int:
        return self.source.stat().st_size

    @property
    def sha256(self) -> str:
        return file_sha256(self.source)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def head_pyspy(environ: Mapping[str, str] | None = None) -> Path | None:
    """The py-spy to ship: ``$CLUSTERKIT_PY_SPY``, else the one installed beside this Python (the venv's
    bin, where ``pip install clusterkit`` put it), else the first on PATH; None where there is none."""
    env = os.environ if environ is None else environ
    for candidate in (env.get(PYSPY_ENV), str(Path(sys.executable).parent / "py-spy"), shutil.which("py-spy")):
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return Path(candidate)
    return None


def pyspy_file(binary: Path) -> CachedFile:
    return CachedFile(binary, f"py-spy-{file_sha256(binary)[:16]}", executable=True)


def hook_file() -> CachedFile:
    return CachedFile(HOOK_SOURCE, f"stacks-hook-{file_sha256(HOOK_SOURCE)[:16]}/sitecustomize.py")


def probe_command(files: list[CachedFile]) -> str:
    """Per node: its cache directory (made, owned by the user, 700), and which of ``files`` it holds."""
    dirs = " ".join(f'"$d/{Path(f.name).parent}"' for f in files if "/" in f.name)
    checks = "".join(f'if [ -s "$d/{f.name}" ]; then echo "{_CACHE}-have {f.name}"; fi; ' for f in files)
    return ('d="${TMPDIR:-/tmp}/clusterkit-$(id -u)"; mkdir -p -m 700 "$d" || exit 3; '
            '[ -O "$d" ] || { echo "$d is not owned by $(id -un)" >&2; exit 4; }; '
            + (f"mkdir -p {dirs} || exit 3; " if dirs else "") + f'echo "{_CACHE} $d"; {checks}')


def read_probe(stdout: str) -> tuple[str, set[str]]:
    """The node's cache directory and the names it holds."""
    directory, have = "", set()
    for line in stdout.splitlines():
        if line.startswith(f"{_CACHE}-have "):
            have.add(line.split(" ", 1)[1].strip())
        elif line.startswith(f"{_CACHE} "):
            directory = line.split(" ", 1)[1].strip()
    if not directory:
        raise RuntimeError("no cache directory: " + (stdout.strip()[-200:] or "no output"))
    return directory, have


def place(nodes: Nodes, files: list[CachedFile], timeout_s: float,
          hosts: list[str] | None = None) -> GroupResult[dict[str, str]]:
    """Each of ``files`` in every host's cache; per host, each file's name -> its path there."""
    chosen = hosts if hosts is not None else nodes.names
    probed = nodes.run(probe_command(files), timeout_s, hosts=chosen).then(
        lambda host, out: read_probe(out.stdout) if out.ok else _refused(out.tail()))
    paths: dict[str, dict[str, str]] = {h: {f.name: f"{d}/{f.name}" for f in files}
                                        for h, (d, _) in probed.succeeded.items()}
    result: GroupResult[dict[str, str]] = GroupResult()
    for host, failed in probed.failed.items():
        result[host] = HostResult(host, error=failed.error, fix=failed.fix, seconds=failed.seconds)
    for f in files:
        # Hosts that lack it, grouped by where it goes (one put per path: users' ids may differ by node).
        need: dict[str, list[str]] = {}
        for host, (_, have) in probed.succeeded.items():
            if f.name not in have:
                need.setdefault(paths[host][f.name], []).append(host)
        for path, group in need.items():
            sent = nodes.put(f.source, RemoteFile(path, f.size, f.sha256), timeout_s, hosts=group)
            mode = "755" if f.executable else "644"
            modes = nodes.run(f"chmod {mode} {shlex.quote(path)}", timeout_s, hosts=list(sent.succeeded))
            for host in group:
                got = sent.get(host)
                if got is None or not got.ok:
                    why = got.error if got is not None else "no copy"
                    result[host] = HostResult(host, error=f"could not put {f.name} there: {why}",
                                              fix=got.fix if got is not None else None)
                elif host not in modes.succeeded or not modes.succeeded[host].ok:
                    why = modes[host].error if host in modes.failed else modes.succeeded[host].tail()
                    result[host] = HostResult(host, error=f"could not chmod {path}: {why}")
    for host in chosen:
        if host not in result and host in paths:
            result[host] = HostResult(host, value=paths[host])
    return GroupResult.of(result[h] for h in chosen if h in result)


def _refused(why: str) -> tuple[str, set[str]]:
    raise RuntimeError(f"cannot use clusterkit's cache directory: {why}")


def place_hook(nodes: Nodes, timeout_s: float) -> tuple[str | None, str]:
    """The stack hook in every node's cache, for ``clusterkit launch``: the directory to put first on the
    ranks' PYTHONPATH, or None and why (a node that could not take it, or nodes whose caches lie at
    different paths: one PYTHONPATH serves every rank)."""
    hook = hook_file()
    placed = place(nodes, [hook], timeout_s)
    if placed.failed:
        return None, "; ".join(f"{h}: {r.error}" for h, r in placed.failed.items())
    dirs = {str(Path(paths[hook.name]).parent) for paths in placed.succeeded.values()}
    if len(dirs) != 1:
        return None, f"the nodes' cache directories differ ({', '.join(sorted(dirs))})"
    return dirs.pop(), ""
