"""What runs ON NODES for an env push (stdlib only, Python 3.8+): survey, unpack, verify.

Started like the relay hop (``python3 -I -S -c BOOT BLOB SPEC``, see ``clusterkit.envpack.push``);
prints one JSON line. ``verify`` runs under the env's own interpreter, the rest under ``python3``.

- ``survey``: is the env installed (its ``.clusterkit-envpack.json``), is there room and a writable
  parent for it, are ``tar``/``zstd`` there, does a venv's base interpreter exist; and it leaves a
  marker beside the prefix so the head can tell which nodes share that directory (``markers``).
  A spec without ``host`` (one srun step's, the same on every node) takes the node's Slurm name.
- ``unpack``: into a temporary directory beside the prefix, then ``conda-unpack``'s own records are
  applied by the env's own python with the real prefix, console-script shebangs made absolute again,
  and only then renamed into place: a half-unpacked env is never at the real path.
- ``verify``: the interpreter starts, the package set (hashed as ``clusterkit doctor`` hashes it, plus
  ``conda-meta``), and which of torch/deepspeed import.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

INSTALLED_MARKER = ".clusterkit-envpack.json"
MARKER_PREFIX = ".clusterkit-shared-"


def existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    stats = os.statvfs(existing_parent(path))
    return stats.f_bavail * stats.f_frsize


def human(n: float) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000.0
    return f"{value:.1f} TB"


# ------------------------------------------------------------------------------------------ survey

def survey(spec: dict[str, Any]) -> dict[str, Any]:
    prefix = Path(spec["prefix"])
    marker_dir = existing_parent(prefix.parent)
    report: dict[str, Any] = {"installed": None, "prefix_exists": prefix.exists(),
                              "parent": str(marker_dir), "writable": os.access(marker_dir, os.W_OK),
                              "free": free_bytes(prefix.parent), "tar": shutil.which("tar"),
                              "zstd": shutil.which("zstd"), "base_python": None, "marker": None}
    with contextlib.suppress(OSError, ValueError):
        report["installed"] = json.loads((prefix / INSTALLED_MARKER).read_text())
    with contextlib.suppress(OSError):
        st = prefix.stat()
        report["source"] = {"host": socket.gethostname(), "dev": st.st_dev, "ino": st.st_ino}
    base = spec.get("base_python")
    if base:
        report["base_python"] = os.access(base, os.X_OK)
    if spec.get("run") and report["writable"]:
        marker = marker_dir / f"{MARKER_PREFIX}{spec['run']}-{spec['host']}"
        with contextlib.suppress(OSError):
            marker.write_text(spec.get("host", ""))
            report["marker"] = str(marker)
    return report


def markers(spec: dict[str, Any]) -> dict[str, Any]:
    """The hosts whose survey markers this node sees; removes its own."""
    directory = existing_parent(Path(spec["prefix"]).parent)
    seen = []
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if entry.name.startswith(f"{MARKER_PREFIX}{spec['run']}-"):
                seen.append(entry.read_text().strip())
    with contextlib.suppress(OSError):
        (directory / f"{MARKER_PREFIX}{spec['run']}-{spec['host']}").unlink()
    return {"seen": sorted(seen)}


# ------------------------------------------------------------------------------------------ unpack

_CONDA_UNPACK_DRIVER = """
import os, sys
tmp, final = sys.argv[1], sys.argv[2]
script = os.path.join(tmp, "bin", "conda-unpack")
sys.path.insert(0, os.path.join(tmp, "bin"))
namespace = {"__name__": "clusterkit_conda_unpack", "__file__": script}
with open(script) as f:
    exec(compile(f.read(), script, "exec"), namespace)
records = namespace["_prefix_records"]
for path, placeholder, mode in records:
    namespace["update_prefix"](os.path.join(tmp, path), final, placeholder, mode=mode)
print(len(records))
"""


def _extract(archive: str, target: Path) -> None:
    argv = ["tar", "-xf", archive, "-C", str(target)]
    if archive.endswith((".zst", ".tzst")):
        argv[1:1] = ["-I", "zstd -d"]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"extracting {archive} failed: {done.stderr.strip()[-300:]}")


def _rewrite_shebangs(tmp: Path, final: str, shebangs: list[list[str]]) -> list[str]:
    """conda-pack writes ``#!/usr/bin/env pythonX`` into console scripts; make them absolute again."""
    notes = []
    for rel, interpreter, rest in shebangs:
        path = tmp / rel
        line = f"#!{final}/{interpreter}{rest}"
        if len(line) > 127:
            notes.append(f"{rel}: an absolute shebang would pass the kernel's 127-byte limit; left as it was")
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if not data.startswith(b"#!"):
            continue
        body = data.split(b"\n", 1)[1] if b"\n" in data else b""
        mode = path.stat().st_mode
        path.write_bytes(line.encode() + b"\n" + body)
        path.chmod(mode)
    return notes


def unpack(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    final = Path(spec["prefix"])
    parent = final.parent
    host = spec.get("host", "this node")
    if not parent.is_dir():
        parent.mkdir(parents=True)
    needed = int(spec["unpacked_bytes"])
    free = free_bytes(parent)
    if free < needed:
        return {"ok": False, "error": f"no space on {host} for the env: {parent} has {human(free)} free, "
                                      f"unpacking needs {human(needed)}",
                "fix": f"free {human(needed - free)} under {parent} on {host}"}
    for stale in parent.glob(f".{final.name}.clusterkit-*"):
        shutil.rmtree(str(stale), ignore_errors=True)
    tmp = parent / f".{final.name}.clusterkit-unpack-{os.getpid()}"
    tmp.mkdir()
    notes: list[str] = []
    try:
        _extract(spec["archive"], tmp)
        if spec["kind"] == "conda":
            if not (tmp / "bin" / "conda-unpack").is_file():
                raise RuntimeError("the archive has no bin/conda-unpack (packed with --dest-prefix?)")
            python = tmp / "bin" / "python"
            done = subprocess.run([str(python), "-I", "-c", _CONDA_UNPACK_DRIVER, str(tmp), str(final)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"conda-unpack with {final}/bin/python failed: {done.stderr.strip()[-400:]}")
            notes.append(f"conda-unpack rewrote {done.stdout.strip()} file(s) for {final}")
            notes += _rewrite_shebangs(tmp, str(final), spec.get("shebangs", []))
        (tmp / INSTALLED_MARKER).write_text(json.dumps(spec["marker"], indent=1, sort_keys=True))
        old = parent / f".{final.name}.clusterkit-old-{os.getpid()}"
        if final.exists() or final.is_symlink():
            final.rename(old)
        try:
            tmp.rename(final)
        except OSError:
            if old.exists():
                old.rename(final)
            raise
        shutil.rmtree(str(old), ignore_errors=True)
    except Exception as exc:
        shutil.rmtree(str(tmp), ignore_errors=True)
        return {"ok": False, "error": f"unpacking on {host} failed: {exc}", "notes": notes}
    if spec.get("remove_archive"):
        with contextlib.suppress(OSError):
            Path(spec["archive"]).unlink()
    return {"ok": True, "seconds": round(time.monotonic() - started, 3), "notes": notes}


# ------------------------------------------------------------------------------------------ verify

def python_package_hash() -> dict[str, Any]:
    """sha256 over sorted ``name==version`` of every distribution: the same as ``clusterkit doctor``'s."""
    import importlib.metadata as metadata

    entries = set()
    for dist in metadata.distributions():
        try:
            name = dist.metadata["Name"]
        except Exception:
            name = None
        if not name:
            continue
        normalized = re.sub(r"[-_.]+", "-", str(name)).lower()
        entries.add(f"{normalized}=={dist.version}")
    return {"sha256": hashlib.sha256("\n".join(sorted(entries)).encode("utf-8")).hexdigest(),
            "count": len(entries)}


def conda_package_hash(prefix: str) -> str | None:
    meta = Path(prefix) / "conda-meta"
    if not meta.is_dir():
        return None
    entries = sorted(path.name[:-5] for path in meta.glob("*.json"))
    return hashlib.sha256("\n".join(entries).encode("utf-8")).hexdigest()


def verify(spec: dict[str, Any]) -> dict[str, Any]:
    import importlib

    report: dict[str, Any] = {"executable": sys.executable, "prefix": sys.prefix,
                              "python": ".".join(str(v) for v in sys.version_info[:3]),
                              "python_packages": python_package_hash(), "conda": conda_package_hash(sys.prefix),
                              "imports": {}}
    failed = None
    for name in spec.get("imports", []):
        if failed:  # a half-imported torch aborts the process when deepspeed imports it again
            report["imports"][name] = {"error": f"not tried: {failed} does not import"}
            continue
        try:
            module = importlib.import_module(name)
            report["imports"][name] = {"version": str(getattr(module, "__version__", "unknown"))}
        except BaseException as exc:
            report["imports"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            failed = name
    return report


def main() -> None:
    spec = json.loads(base64.b64decode(sys.argv[2]).decode("utf-8"))
    # One command for every node (a Slurm step) names no host: each node fills in its own name.
    spec["host"] = spec.get("host") or os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    op = spec["op"]
    try:
        result = {"survey": survey, "markers": markers, "unpack": unpack, "verify": verify}[op](spec)
    except Exception as exc:
        result = {"ok": False, "error": f"{op} failed on {spec.get('host', 'this node')}: {type(exc).__name__}: {exc}"}
    sys.stdout.write("@@ckenv " + json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    # torch and friends can take seconds to tear down; nothing is left to clean up here.
    os._exit(0)


if __name__ == "__main__":
    main()
