"""What runs ON NODES for an env push (stdlib only, Python 3.8+): survey, unpack, verify.

Started like the relay hop (``python3 -I -S -c BOOT BLOB SPEC``, see ``clusterkit.envpack.push``);
prints one JSON line. ``verify`` runs under the env's own interpreter, the rest under ``python3``.

- ``survey``: what is at the prefix (nothing, an empty directory, an env clusterkit installed (its
  ``.clusterkit-envpack.json``) or something else), and for an env there what it holds now: its own
  interpreter's package set and version, and its files (count and bytes, as recorded at unpack); is
  there room and a writable directory for the archive and for the env (each on its own filesystem),
  are ``tar``/``zstd`` there, does a venv's base interpreter exist. It also writes a token (this run's,
  this host's name inside) beside the prefix and in the staging directory, then lists the tokens there:
  nodes that see each other's share that directory (one filesystem), whatever their names.
  ``forget`` lists them again, then removes this host's. A spec without ``host`` (one srun step's,
  the same on every node) takes the node's Slurm name.
- ``unpack``: into a temporary directory beside the prefix, then ``conda-unpack``'s own records are
  applied by the env's own python with the real prefix, console-script shebangs made absolute again,
  and only then renamed into place: a half-unpacked env is never at the real path. What is at the
  prefix is replaced only when clusterkit installed it (or it is empty); anything else only with
  ``replace_existing``, and then it is moved aside, never deleted.
- ``verify``: the interpreter starts, the package set (hashed as ``clusterkit doctor`` hashes it, plus
  ``conda-meta``), and which of torch/deepspeed import.
- ``discard``: delete a staged archive (one that nodes sharing its directory have all unpacked).
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
TOKEN_PREFIX = ".clusterkit-shared-"
HEAD = "@head"  #: the name the head's own token carries (no hostname starts with @)
BOOT = ("import base64,sys,zlib;exec(compile(zlib.decompress(base64.b64decode(sys.argv[1])),"
        "'clusterkit-node-env','exec'))")
ENV_CHECK_TIMEOUT_S = 60.0
#: What is at a prefix: nothing, an empty directory, an env clusterkit installed, or anything else.
ABSENT, EMPTY, CLUSTERKIT, FOREIGN = "absent", "empty", "clusterkit", "foreign"


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

def prefix_state(prefix: Path) -> dict[str, Any]:
    """What is at ``prefix``: ``state`` (absent, empty, clusterkit, foreign) and, for anything else, a few names."""
    if not (prefix.exists() or prefix.is_symlink()):
        return {"state": ABSENT}
    if not prefix.is_dir():
        return {"state": FOREIGN, "sample": [], "what": "a file"}
    try:
        names = sorted(entry.name for entry in prefix.iterdir())
    except OSError as exc:
        return {"state": FOREIGN, "sample": [], "what": f"a directory this user cannot list ({exc.strerror})"}
    if not names:
        return {"state": EMPTY}
    if INSTALLED_MARKER in names:
        return {"state": CLUSTERKIT}
    return {"state": FOREIGN, "sample": names[:5], "what": f"a directory of {len(names)} entr"
            + ("y" if len(names) == 1 else "ies")}


def tree_summary(prefix: Path) -> dict[str, int]:
    """Files and bytes under ``prefix``, less ``__pycache__`` (the env's python writes there) and the marker."""
    files = total = 0
    for root, dirs, names in os.walk(str(prefix)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            if root == str(prefix) and name == INSTALLED_MARKER:
                continue
            try:
                total += Path(root, name).lstat().st_size
            except OSError:
                continue
            files += 1
    return {"files": files, "bytes": total}


def env_check(prefix: Path, blob: str | None, timeout_s: float) -> dict[str, Any]:
    """The env's own interpreter asked what it is (``verify`` without imports), or why it would not say."""
    python = prefix / "bin" / "python"
    if blob is None:
        return {"error": "cannot check: this script was not started from its blob"}
    spec = base64.b64encode(json.dumps({"op": "verify", "imports": []}).encode("utf-8")).decode("ascii")
    try:
        done = subprocess.run([str(python), "-I", "-c", BOOT, blob, spec], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"{python} gave no answer within {timeout_s:.0f}s"}
    except OSError as exc:
        return {"error": f"{python} does not start: {exc.strerror}"}
    for line in done.stdout.splitlines():
        if line.startswith("@@ckenv "):
            found: dict[str, Any] = json.loads(line[len("@@ckenv "):])
            return found
    tail = " | ".join(done.stderr.strip().splitlines()[-2:])
    return {"error": f"{python} does not run: {tail or 'exit status ' + str(done.returncode)}"}


def filesystem(path: Path) -> dict[str, Any]:
    """Where something would be written under ``path``: its nearest existing directory, whether this user
    may write there, free bytes, and the filesystem (st_dev: compared on this node only)."""
    directory = existing_parent(path)
    return {"dir": str(directory), "writable": os.access(str(directory), os.W_OK), "free": free_bytes(path),
            "fs": directory.stat().st_dev}


def _token_name(run: str, host: str) -> str:
    return f"{TOKEN_PREFIX}{run}-{host}"


def write_token(directory: Path, run: str, host: str) -> bool:
    """This run's token for ``host`` in ``directory``, written whole before it appears (its content is the name)."""
    final = directory / _token_name(run, host)
    temp = directory / f".{_token_name(run, host)}.{os.getpid()}.tmp"
    try:
        temp.write_text(host)
        temp.replace(final)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        return False


def read_tokens(directory: Path, run: str) -> list[str]:
    """The hosts whose token of this run is in ``directory`` (a name, and the same name inside)."""
    seen = []
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if not entry.name.startswith(f"{TOKEN_PREFIX}{run}-"):
                continue
            host = entry.name[len(f"{TOKEN_PREFIX}{run}-"):]
            with contextlib.suppress(OSError, UnicodeDecodeError):
                if entry.read_text() == host:
                    seen.append(host)
    return sorted(seen)


def clear_stale_tokens(directory: Path, run: str, older_than_s: float = 3600.0) -> None:
    """Tokens other runs left behind (a push killed between its survey and its forget), once an hour old."""
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            if entry.name.startswith(TOKEN_PREFIX) and not entry.name.startswith(f"{TOKEN_PREFIX}{run}-"):
                with contextlib.suppress(OSError):
                    if now - entry.lstat().st_mtime > older_than_s:
                        entry.unlink()


def token_dirs(spec: dict[str, Any]) -> dict[str, Path]:
    """Where this run's tokens go: beside the prefix, and in the staging directory (often the same)."""
    dirs = {"prefix": existing_parent(Path(spec["prefix"]).parent)}
    if spec.get("staging"):
        dirs["staging"] = existing_parent(Path(spec["staging"]))
    return dirs


def survey(spec: dict[str, Any], blob: str | None = None) -> dict[str, Any]:
    prefix = Path(spec["prefix"])
    at_prefix = prefix_state(prefix)
    place = filesystem(prefix.parent)
    report: dict[str, Any] = {"installed": None, "prefix_exists": at_prefix["state"] != ABSENT,
                              "at_prefix": at_prefix, "parent": place["dir"], "writable": place["writable"],
                              "free": place["free"], "fs": place["fs"], "tar": shutil.which("tar"),
                              "zstd": shutil.which("zstd"), "base_python": None, "seen": {}}
    if at_prefix["state"] == CLUSTERKIT:
        with contextlib.suppress(OSError, ValueError):
            report["installed"] = json.loads((prefix / INSTALLED_MARKER).read_text())
    with contextlib.suppress(OSError):
        st = prefix.stat()
        report["source"] = {"host": socket.gethostname(), "dev": st.st_dev, "ino": st.st_ino}
    base = spec.get("base_python")
    if base:
        report["base_python"] = os.access(base, os.X_OK)
    if spec.get("staging"):
        staging = Path(spec["staging"])
        report["staging"] = filesystem(staging)
        with contextlib.suppress(OSError):
            staged = staging / str(spec.get("archive_name", ""))
            if spec.get("archive_name") and staged.is_file():
                report["staging"]["staged_bytes"] = staged.stat().st_size
    if spec.get("run"):
        dirs = token_dirs(spec)
        for directory in set(dirs.values()):
            write_token(directory, spec["run"], spec["host"])
            clear_stale_tokens(directory, spec["run"])
        report["seen"] = {kind: read_tokens(directory, spec["run"]) for kind, directory in dirs.items()}
    if spec.get("check_env") and at_prefix["state"] in (CLUSTERKIT, FOREIGN) and prefix.is_dir():
        report["env"] = env_check(prefix, blob, float(spec.get("check_timeout_s", ENV_CHECK_TIMEOUT_S)))
        if at_prefix["state"] == CLUSTERKIT:
            report["env"]["tree"] = tree_summary(prefix)
    return report


def forget(spec: dict[str, Any]) -> dict[str, Any]:
    """The tokens this node sees now (after every survey), then this host's removed."""
    dirs = token_dirs(spec)
    seen = {kind: read_tokens(directory, spec["run"]) for kind, directory in dirs.items()}
    for directory in set(dirs.values()):
        with contextlib.suppress(OSError):
            (directory / _token_name(spec["run"], spec["host"])).unlink()
    return {"seen": seen}


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
    at_prefix = prefix_state(final)
    if at_prefix["state"] == FOREIGN and not spec.get("replace_existing"):
        return {"ok": False, "error": f"{final} on {host} holds {at_prefix['what']} that clusterkit did not install: "
                                      "not replaced", "refused": True}
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
        # What this copy holds, for a later survey to judge it by (files lost or added since).
        marker = dict(spec["marker"], tree=tree_summary(tmp))
        (tmp / INSTALLED_MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True))
        kept_aside = None
        if prefix_state(final)["state"] == FOREIGN:  # only with replace_existing (checked above): kept
            kept_aside = parent / f"{final.name}.clusterkit-replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            old = kept_aside
        else:
            old = parent / f".{final.name}.clusterkit-old-{os.getpid()}"
        if final.exists() or final.is_symlink():
            final.rename(old)
        try:
            tmp.rename(final)
        except OSError:
            if old.exists() or old.is_symlink():
                old.rename(final)
            raise
        if kept_aside is not None:
            notes.append(f"what was at {final} (not installed by clusterkit) was moved to {kept_aside}")
        else:
            shutil.rmtree(str(old), ignore_errors=True)
    except Exception as exc:
        shutil.rmtree(str(tmp), ignore_errors=True)
        return {"ok": False, "error": f"unpacking on {host} failed: {exc}", "notes": notes}
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


def discard(spec: dict[str, Any]) -> dict[str, Any]:
    """Delete the staged archive (``--remove-archive``, once every node sharing it has unpacked)."""
    with contextlib.suppress(FileNotFoundError):
        Path(spec["archive"]).unlink()
    return {"ok": True}


def main() -> None:
    spec = json.loads(base64.b64decode(sys.argv[2]).decode("utf-8"))
    # One command for every node names no host: each fills in the name the head knows it by (every
    # transport exports CLUSTERKIT_NODE), else Slurm's name for it, else its own.
    spec["host"] = (spec.get("host") or os.environ.get("CLUSTERKIT_NODE") or os.environ.get("SLURMD_NODENAME")
                    or socket.gethostname())
    op = spec["op"]
    try:
        if op == "survey":
            result = survey(spec, sys.argv[1])
        else:
            result = {"forget": forget, "unpack": unpack, "verify": verify, "discard": discard}[op](spec)
    except Exception as exc:
        result = {"ok": False, "error": f"{op} failed on {spec.get('host', 'this node')}: {type(exc).__name__}: {exc}"}
    sys.stdout.write("@@ckenv " + json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    # torch and friends can take seconds to tear down; nothing is left to clean up here.
    os._exit(0)


if __name__ == "__main__":
    main()
