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
import time
from pathlib import Path
from typing import Any

from clusterkit.collect.deadline import run_command
from clusterkit.facts import Maybe, Unavailable

MAX_AGE_S = 6 * 3600
_ENV_KEYS = ("PATH", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "CUDA_VISIBLE_DEVICES", "TORCH_CUDA_ARCH_LIST",
             "TORCH_EXTENSIONS_DIR", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX")
_ENV_PREFIXES = ("DS_",)
_WATCHED_FILES = ("torch/version.py", "torch/__init__.py", "deepspeed/__init__.py",
                  "deepspeed/git_version_info_installed.py")
_SYS_PATH = "import sys, json; print(json.dumps(sys.path))"


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


def fingerprint(python: str, cwd: str, probe_source: str, environ: Any = None) -> Maybe[str]:
    """A digest of everything the probe's answer depends on, or Unavailable if it cannot be taken."""
    env = os.environ if environ is None else environ
    out = run_command([python, "-c", _SYS_PATH], timeout_s=10.0, cwd=cwd)
    if isinstance(out, Unavailable):
        return out
    if not out.ok:
        return Unavailable(f"cannot read sys.path: {out.tail(1)}")
    try:
        entries = [str(p) for p in json.loads(out.stdout.strip().splitlines()[-1])]
    except (ValueError, IndexError):
        return Unavailable("cannot read sys.path: unexpected output")
    parts = [probe_source, os.path.realpath(python), _stat(os.path.realpath(python)), cwd, _stat(cwd),
             socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), _read("/proc/driver/nvidia/version")]
    parts += [f"{k}={env.get(k, '')}" for k in _ENV_KEYS]
    parts += sorted(f"{k}={v}" for k, v in env.items() if k.startswith(_ENV_PREFIXES))
    for entry in entries:
        parts.append(f"{entry}={_stat(entry or cwd)}")
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


def load(key: str, now: float | None = None) -> dict[str, Any] | None:
    """The cached probe for ``key``, if fresh."""
    if not _private(cache_dir()):
        return None
    path = cache_dir() / (key[:32] + ".json")
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    if (now if now is not None else time.time()) - float(entry.get("probed_at", 0)) > MAX_AGE_S:
        return None
    data = entry.get("data")
    return {"probed_at": float(entry["probed_at"]), "data": data} if isinstance(data, dict) else None


def store(key: str, data: dict[str, Any], probed_at: float) -> None:
    """Save a probe atomically; a cache that cannot be written is simply not used."""
    directory = cache_dir()
    try:
        directory.parent.mkdir(mode=0o700, exist_ok=True)
        if not _private(directory):
            return  # someone else's (or an open) directory: never trust or write it
        directory.mkdir(mode=0o700, exist_ok=True)
        tmp = directory / f".{key[:32]}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"key": key, "probed_at": probed_at, "data": data}, f)
        tmp.replace(directory / (key[:32] + ".json"))
    except OSError:
        pass
