"""Reuse the last Python-env probe while the env provably has not changed.

Probing an env means importing torch and DeepSpeed: 1.5 CPU-seconds, the bulk of a doctor run.
The fingerprint that guards a cached probe covers everything the probe reads: the interpreter and
every ``sys.path`` entry (a ``pip install`` or a shadowing copy changes a directory's mtime; torch's
and DeepSpeed's version files are stat'ed directly), the environment variables that steer torch,
CUDA and DeepSpeed, the NVIDIA driver, the host and its boot, the launch directory, and the probe's
own source. A cached probe is also dropped after ``MAX_AGE_S``. ``--fresh`` bypasses the cache.

The cache lives in ``$TMPDIR/clusterkit-<uid>/`` (private, node-local), next to the shipped agent.
Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from clusterkit.node.collect.deadline import run_command
from clusterkit.node.facts import Maybe, Unavailable

MAX_AGE_S = 6 * 3600
_ENV_KEYS = ("PATH", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "CUDA_VISIBLE_DEVICES", "TORCH_CUDA_ARCH_LIST",
             "TORCH_EXTENSIONS_DIR", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX")
_ENV_PREFIXES = ("DS_",)
_WATCHED_FILES = ("torch/version.py", "torch/__init__.py", "deepspeed/__init__.py",
                  "deepspeed/git_version_info_installed.py")
_SYS_PATH = "import sys, json; print(json.dumps(sys.path))"
#: What Python reads for sys.path at start-up (besides its own location and the site directories).
_PATH_ENV_KEYS = ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONUSERBASE", "PYTHONSAFEPATH",
                  "PYTHONPLATLIBDIR", "HOME")
_CUSTOMIZE = ("sitecustomize.py", "usercustomize.py", "sitecustomize", "usercustomize")


def cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"clusterkit-{os.getuid()}" / "pyenv-cache"


def _stat(path: str | Path) -> str:
    try:
        st = Path(path).stat()
    except OSError:
        return "-"
    return f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(4096)
    except OSError:
        return "-"


def site_guard(python: str, cwd: str, entries: list[str], environ: Any = None) -> str:
    """A digest of what decides ``python``'s ``sys.path``, given the path it had last time.

    That is the interpreter and its ``pyvenv.cfg``, the variables Python reads for its path, the user
    site, every path entry, every ``sitecustomize``/``usercustomize`` on it, and every ``.pth`` file in
    its site directories (adding or removing one changes the directory's mtime; editing one changes its
    own). Not covered: a ``.pth`` import line or a ``sitecustomize`` that computes the path from
    something else (``doctor --fresh`` asks the interpreter anyway).
    """
    env = os.environ if environ is None else environ
    exe = Path(python)
    real = os.path.realpath(python)
    parts = [python, real, _stat(real), cwd, _stat(exe.parent / "pyvenv.cfg"), _stat(exe.parent.parent / "pyvenv.cfg")]
    parts += [f"{k}={env.get(k, '')}" for k in _PATH_ENV_KEYS]
    user_lib = Path(env.get("PYTHONUSERBASE") or Path(env.get("HOME") or "~").expanduser() / ".local") / "lib"
    parts.append(f"{user_lib}={_stat(user_lib)}")
    parts += [f"{d}={_stat(d)}" for d in sorted(user_lib.glob("python*/site-packages"))]
    for entry in entries:
        folder = Path(entry or cwd)
        parts.append(f"{entry}={_stat(folder)}")
        parts += [f"{entry}/{name}={_stat(folder / name)}" for name in _CUSTOMIZE]
        if folder.name in ("site-packages", "dist-packages"):
            try:
                pth_files = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".pth"))
            except OSError:
                pth_files = []
            parts += [f"{entry}/{name}={_stat(folder / name)}" for name in pth_files]
    return hashlib.sha256("\n".join(parts).encode("utf-8", "replace")).hexdigest()


def _sys_path_and_guard(python: str, cwd: str, environ: Any = None) -> Maybe[tuple[list[str], str]]:
    name = "syspath-" + hashlib.sha256(f"{python}\n{cwd}".encode("utf-8", "replace")).hexdigest()[:24] + ".json"
    cached = _read_entry(name)
    if isinstance(cached, dict) and isinstance(cached.get("entries"), list) and cached.get("guard"):
        entries = [str(e) for e in cached["entries"]]
        guard = site_guard(python, cwd, entries, environ)
        if guard == cached["guard"]:
            return entries, guard
    out = run_command([python, "-c", _SYS_PATH], timeout_s=10.0, cwd=cwd)
    if isinstance(out, Unavailable):
        return out
    if not out.ok:
        return Unavailable(f"cannot read sys.path: {out.tail(1)}")
    try:
        entries = [str(p) for p in json.loads(out.stdout.strip().splitlines()[-1])]
    except (ValueError, IndexError):
        return Unavailable("cannot read sys.path: unexpected output")
    guard = site_guard(python, cwd, entries, environ)
    _write_entry(name, {"guard": guard, "entries": entries})
    return entries, guard


def training_sys_path(python: str, cwd: str, environ: Any = None) -> Maybe[list[str]]:
    """``python``'s ``sys.path`` (as ``python -c`` from ``cwd`` has it), reused while its guard holds.

    Starting the training interpreter costs tens of milliseconds of CPU per node and run (more for a
    conda env with many ``.pth`` files, or on a network filesystem), so it is asked only when
    something that decides the path has changed.
    """
    found = _sys_path_and_guard(python, cwd, environ)
    return found if isinstance(found, Unavailable) else found[0]


def fingerprint(python: str, cwd: str, probe_source: str, environ: Any = None) -> Maybe[str]:
    """A digest of everything the probe's answer depends on, or Unavailable if it cannot be taken."""
    env = os.environ if environ is None else environ
    found = _sys_path_and_guard(python, cwd, env)
    if isinstance(found, Unavailable):
        return found
    # The guard already covers the interpreter and every sys.path entry (stat'ed once, there).
    entries, guard = found
    parts = [probe_source, guard, cwd, _stat(cwd),
             socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), _read("/proc/driver/nvidia/version")]
    parts += [f"{k}={env.get(k, '')}" for k in _ENV_KEYS]
    parts += sorted(f"{k}={v}" for k, v in env.items() if k.startswith(_ENV_PREFIXES))
    for entry in entries:
        if entry and Path(entry).is_dir():
            parts += [f"{entry}/{name}={_stat(Path(entry) / name)}" for name in _WATCHED_FILES]
    return hashlib.sha256("\n".join(parts).encode("utf-8", "replace")).hexdigest()


def _private(directory: Path) -> bool:
    """The cache's parent is ours and closed to others (it sits in a shared /tmp)."""
    try:
        st = directory.parent.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def _read_entry(name: str) -> Any:
    """A JSON file of the private cache directory, or None."""
    if not _private(cache_dir()):
        return None
    try:
        with open(cache_dir() / name, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_entry(name: str, entry: Any) -> None:
    """Write a JSON file into the private cache directory atomically; failures leave no cache."""
    directory = cache_dir()
    try:
        directory.parent.mkdir(mode=0o700, exist_ok=True)
        if not _private(directory):
            return  # someone else's (or an open) directory: never trust or write it
        directory.mkdir(mode=0o700, exist_ok=True)
        tmp = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entry, f)
        tmp.replace(directory / name)
    except OSError:
        pass


def load(key: str, now: float | None = None) -> dict[str, Any] | None:
    """The cached probe for ``key``, if fresh."""
    entry = _read_entry(key[:32] + ".json")
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    if (now if now is not None else time.time()) - float(entry.get("probed_at", 0)) > MAX_AGE_S:
        return None
    data = entry.get("data")
    return {"probed_at": float(entry["probed_at"]), "data": data} if isinstance(data, dict) else None


def store(key: str, data: dict[str, Any], probed_at: float) -> None:
    """Save a probe atomically; a cache that cannot be written is simply not used."""
    _write_entry(key[:32] + ".json", {"key": key, "probed_at": probed_at, "data": data})
