"""Pack a training env once on the head: a conda env with conda-pack, a venv (venv, uv) as a tar.

Before packing, what cannot travel is refused with what is wrong and the way out:

- editable installs (their code lives outside the env);
- files conda manages that were deleted or overwritten (``--ignore-missing-files`` drops them: they
  are listed, in the refusal and in the manifest, never skipped silently);
- packages whose package cache was removed (conda-pack reads their files from it).

The archive (``.tar.zst``, zstd with threads) sits beside a manifest (``ARCHIVE.json``) with its
sha256, the env's path and package set (hashed as ``clusterkit doctor`` does), which of torch and
deepspeed import, and for venvs the base interpreter that must exist on every node.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import socket
import subprocess
import tarfile
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.errors import ClusterkitError, UsageError
from clusterkit.node import env_unpack as node_env

NODE_ENV_SOURCE = Path(__file__).resolve().parents[1] / "node" / "env_unpack.py"
RESULT_MARKER = "@@ckenv "
_BOOT = node_env.BOOT
CHECKED_IMPORTS = ("torch", "deepspeed")
MIN_LEVEL, MAX_LEVEL = 1, 22  #: zstd's compression levels
MANIFEST_VERSION = 1


class PackRefused(ClusterkitError):
    """The env cannot be packed as it is; the message says what is wrong and the way out."""


@dataclass
class Manifest:
    """What was packed and what every node must end up with."""

    kind: str  #: "conda" or "venv"
    prefix: str
    archive: str  #: file name, beside the manifest
    size: int
    sha256: str
    unpacked_bytes: int
    files: int
    python_version: str
    package_set: dict[str, Any]  #: {"python": sha256, "python_count": n, "conda": sha256 or None}
    imports: dict[str, str]  #: torch/deepspeed that import in the env -> version
    fingerprint: str
    base_python: str | None = None  #: venvs: the interpreter they were made from
    shebangs: list[list[str]] = field(default_factory=list)  #: [path, interpreter, rest] to make absolute
    dropped_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: {"host", "dev", "ino"} of the packed directory: that env is the source, never replaced by its copy
    source: dict[str, Any] = field(default_factory=dict)
    packed_with: str = ""
    pack_seconds: float = 0.0
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """The manifest at ``path``; a UsageError naming the field when a value is missing or of the wrong type."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: not a clusterkit env manifest ({exc})") from None
        if not isinstance(data, dict):
            raise UsageError(f"{path}: not a clusterkit env manifest (not a JSON object)")
        unknown = sorted(set(data) - set(_FIELD_TYPES))
        missing = sorted(name for name in _REQUIRED_FIELDS if name not in data)
        if unknown or missing:
            raise UsageError(f"{path}: not a clusterkit env manifest ("
                             + "; ".join(part for part in (f"unknown field(s) {', '.join(unknown)}" if unknown else "",
                                                           f"missing {', '.join(missing)}" if missing else "")
                                         if part) + ")")
        for name, value in data.items():
            wanted = _FIELD_TYPES[name]
            # bool is an int to Python; no count or size is true or false
            if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in wanted)
                raise UsageError(f"{path}: \"{name}\" is {json.dumps(value)[:40]}, not {names}: the manifest "
                                 "was changed since `clusterkit env pack` wrote it; pack the env again")
        for name in ("size", "unpacked_bytes", "files"):
            if data[name] < 0:
                raise UsageError(f"{path}: \"{name}\" is {data[name]}: a size is never negative; pack the env again")
        return cls(**data)

    def installed_marker(self) -> dict[str, Any]:
        """What an unpacked copy records about itself (``PREFIX/.clusterkit-envpack.json``)."""
        return {"sha256": self.sha256, "package_set": self.package_set, "kind": self.kind, "prefix": self.prefix}


#: Each manifest field's JSON types (``Manifest.load`` checks them: a hand-edited value is an input error).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,), "prefix": (str,), "archive": (str,), "size": (int,), "sha256": (str,),
    "unpacked_bytes": (int,), "files": (int,), "python_version": (str,), "package_set": (dict,),
    "imports": (dict,), "fingerprint": (str,), "base_python": (str, type(None)), "shebangs": (list,),
    "dropped_files": (list,), "notes": (list,), "source": (dict,), "packed_with": (str,),
    "pack_seconds": (int, float), "version": (int,)}
_REQUIRED_FIELDS = ("kind", "prefix", "archive", "size", "sha256", "unpacked_bytes", "files", "python_version",
                    "package_set", "imports", "fingerprint")


def manifest_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".json")


# ----------------------------------------------------------------------------------- inspection


def env_kind(prefix: Path) -> str:
    """``conda`` (conda-meta/), ``venv`` (pyvenv.cfg), else a UsageError saying what the path is."""
    if (prefix / "conda-meta").is_dir():
        return "conda"
    if (prefix / "pyvenv.cfg").is_file():
        return "venv"
    if prefix.exists() and not prefix.is_dir():
        raise UsageError(f"{prefix} is a file, not an env: pass the env's directory (the one holding bin/python)")
    if not prefix.is_dir():
        raise UsageError(f"{prefix}: no such directory")
    raise UsageError(f"{prefix} is neither a conda env (no conda-meta/) nor a venv (no pyvenv.cfg): pass the env's "
                     "prefix, e.g. the directory holding bin/python")


def env_prefix_of(python: str) -> Path:
    """The env an interpreter belongs to (``sys.prefix``), without starting it where the layout says."""
    path = Path(python).absolute()
    if path.parent.name == "bin":
        return path.parent.parent
    raise UsageError(f"{python}: expected PREFIX/bin/python")


def site_packages(prefix: Path) -> list[Path]:
    return sorted(prefix.glob("lib/python3*/site-packages"))


def editable_installs(prefix: Path) -> list[str]:
    """Distributions installed in editable mode, with where their code lives."""
    found = []
    for site in site_packages(prefix):
        for direct_url in site.glob("*.dist-info/direct_url.json"):
            try:
                data = json.loads(direct_url.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("dir_info", {}).get("editable"):
                name = direct_url.parent.name.removesuffix(".dist-info").rsplit("-", 1)[0]
                found.append(f"{name} (code in {data.get('url', '?').removeprefix('file://')})")
        found += [f"{link.stem} (egg-link)" for link in site.glob("*.egg-link")]
    return sorted(found)


def conda_records(prefix: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise PackRefused(f"{path}: unreadable conda record ({exc})") from None
    return records


def uncached_packages(records: list[dict[str, Any]]) -> list[str]:
    missing = []
    for record in records:
        source = (record.get("link") or {}).get("source") or record.get("extracted_package_dir") or ""
        if not source or not Path(source).is_dir():
            missing.append(f"{record['name']}-{record['version']}-{record.get('build', '')} (cache: {source or '?'})")
    return missing


def missing_managed_files(prefix: Path, records: list[dict[str, Any]]) -> dict[str, list[str]]:
    missing: dict[str, list[str]] = {}
    for record in records:
        gone = [f for f in record.get("files", []) if not os.path.lexists(prefix / f)]
        if gone:
            missing[f"{record['name']}-{record['version']}"] = gone
    return missing


def console_script_shebangs(prefix: Path) -> tuple[list[list[str]], list[str]]:
    """bin/ scripts: ``[path, interpreter, rest]`` of those whose shebang is the env's python, and the
    names of those starting ``/usr/bin/env python`` (which run whatever python is on PATH)."""
    absolute, via_env = [], []
    bindir = prefix / "bin"
    for path in sorted(bindir.iterdir()) if bindir.is_dir() else []:
        if path.is_symlink() or not path.is_file():
            continue
        try:
            with open(path, "rb") as f:
                first = f.readline(512)
        except OSError:
            continue
        if not first.startswith(b"#!"):
            continue
        line = first[2:].decode("utf-8", "replace").strip()
        if line.startswith(f"{prefix}/bin/python"):
            interpreter, _, rest = line[len(str(prefix)) + 1:].partition(" ")
            absolute.append([f"bin/{path.name}", interpreter, f" {rest}" if rest else ""])
        elif line.startswith("/usr/bin/env python"):
            via_env.append(path.name)
    return absolute, via_env


def tree_size(prefix: Path) -> tuple[int, int, str]:
    """Files, bytes and a fingerprint (paths, sizes, mtimes) of everything under ``prefix``."""
    digest = hashlib.sha256()
    files = total = 0
    for root, dirs, names in os.walk(prefix):
        dirs.sort()
        for name in sorted(names):
            path = f"{root}/{name}"
            try:
                st = os.lstat(path)
            except OSError:
                continue
            files += 1
            total += st.st_size
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return files, total, digest.hexdigest()


def base_interpreter(prefix: Path) -> str:
    """The interpreter a venv was made from: where ``bin/python`` leads, else ``home`` in pyvenv.cfg."""
    python = prefix / "bin" / "python"
    if python.is_symlink():
        return os.path.realpath(python)
    config = dict(line.split("=", 1) for line in (prefix / "pyvenv.cfg").read_text().splitlines() if "=" in line)
    home = config.get("home", "").strip()
    version = ".".join(config.get("version", config.get("version_info", "")).strip().split(".")[:2])
    return f"{home}/python{version}" if home else str(python)


# ---------------------------------------------------------------------------------- node scripts


def node_env_command(python: str, spec: dict[str, Any], *, isolated_site: bool = True) -> str:
    """The shell command that runs node_env.py's ``spec["op"]`` with ``python``."""
    blob = base64.b64encode(zlib.compress(NODE_ENV_SOURCE.read_bytes(), 9)).decode("ascii")
    encoded = base64.b64encode(json.dumps(spec).encode()).decode("ascii")
    flags = "-I -S" if isolated_site else "-I"
    return f"{shlex.quote(python)} {flags} -c {shlex.quote(_BOOT)} {blob} {encoded}"


def parse_node_env_output(stdout: str, where: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if not lines:
        tail = " | ".join(stdout.strip().splitlines()[-3:]) or "no output"
        raise ClusterkitError(f"{where}: no result ({tail})")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARKER):])
    return result


def verify_here(prefix: Path, imports: tuple[str, ...] = CHECKED_IMPORTS, timeout_s: float = 300) -> dict[str, Any]:
    """Run the node verifier with the env's own python on this machine."""
    command = node_env_command(str(prefix / "bin" / "python"), {"op": "verify", "imports": list(imports)},
                               isolated_site=False)
    try:
        done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise PackRefused(f"{prefix}/bin/python did not finish within {timeout_s:g}s") from None
    if done.returncode != 0 and RESULT_MARKER not in done.stdout:
        raise PackRefused(f"{prefix}/bin/python does not run here: {done.stderr.strip()[-300:]}")
    return parse_node_env_output(done.stdout, f"{prefix}/bin/python")


# ---------------------------------------------------------------------------------------- pack


@dataclass(frozen=True)
class PackOptions:
    output_dir: Path
    level: int = 3
    threads: int = 0  #: 0: every CPU
    ignore_missing_files: bool = False
    allow_editable: bool = False
    allow_uncached: bool = False


def preflight(prefix: Path, options: PackOptions) -> tuple[str, list[str], list[str]]:
    """The env's kind, the files --ignore-missing-files drops, and notes; PackRefused when it cannot travel."""
    kind = env_kind(prefix)
    notes: list[str] = []
    dropped: list[str] = []
    editable = editable_installs(prefix)
    if editable and not options.allow_editable:
        raise PackRefused(
            f"{prefix} has editable installs, whose code lives outside the env and would not travel: "
            f"{'; '.join(editable)}. Way out: reinstall them without -e (pip install --no-deps --force-reinstall "
            "DIR), or sync their source to the same path on every node (bootstrap --sync DIR) and pass "
            "--allow-editable")
    if kind == "conda":
        records = conda_records(prefix)
        uncached = uncached_packages(records)
        if uncached and not options.allow_uncached:
            raise PackRefused(
                f"the package cache of {len(uncached)} package(s) in {prefix} was removed (conda clean -p?): "
                f"{'; '.join(uncached)}. conda-pack reads their files from there to find the prefix placeholders. "
                "Way out: restore the cache (conda install --force-reinstall -p PREFIX those packages), or pass "
                "--allow-uncached: safe here because the env is unpacked at the same path, so their files "
                "already hold the right prefix")
        missing = missing_managed_files(prefix, records)
        listing = [f"{pkg}: {path}" for pkg, paths in sorted(missing.items()) for path in paths]
        if listing and not options.ignore_missing_files:
            shown = listing[:40] + ([f"... and {len(listing) - 40} more"] if len(listing) > 40 else [])
            raise PackRefused(
                f"{len(listing)} file(s) conda manages in {prefix} were deleted or overwritten (pip over conda?):\n  "
                + "\n  ".join(shown)
                + f"\nWay out: conda install --force-reinstall -p {prefix} {' '.join(sorted(missing))}; or pass "
                  "--ignore-missing-files, which packs the env WITHOUT the files listed above")
        dropped = listing
        if dropped:
            notes.append(f"--ignore-missing-files: {len(dropped)} file(s) left out (listed in the manifest)")
    return kind, dropped, notes


def pack_env(prefix: Path, options: PackOptions, *, log: Any = None) -> tuple[Path, Manifest]:
    """Pack ``prefix`` into ``options.output_dir``; returns the archive and its manifest (also written)."""
    prefix = prefix.absolute()
    if not MIN_LEVEL <= options.level <= MAX_LEVEL:
        raise UsageError(f"--level {options.level}: zstd levels go from {MIN_LEVEL} (fastest) to {MAX_LEVEL} "
                         "(smallest); the default is 3")
    if options.threads < 0:
        raise UsageError(f"--threads {options.threads}: a number of threads, or 0 for one per CPU")
    kind, dropped, notes = preflight(prefix, options)
    _check_output_dir(options.output_dir)
    if not (prefix / "bin" / "python").exists():
        raise PackRefused(f"{prefix} has no bin/python: it cannot be verified on the nodes")
    probe = verify_here(prefix)
    imports = {name: str(v["version"]) for name, v in probe["imports"].items() if "version" in v}
    for name in CHECKED_IMPORTS:
        if name not in imports:
            notes.append(f"{name} does not import in this env ({probe['imports'][name].get('error', '?')}): it is "
                         "not checked on the nodes")
    shebangs, via_env = console_script_shebangs(prefix)
    if via_env:
        notes.append(f"bin/ scripts starting '#!/usr/bin/env python' run whatever python is first on PATH (over "
                     f"pdsh, not this env) unless the env is activated: {', '.join(via_env[:12])}")
    files, unpacked, fingerprint = tree_size(prefix)
    threads = options.threads or os.cpu_count() or 1
    started = time.monotonic()
    try:
        fd, temp_name = tempfile.mkstemp(dir=options.output_dir, prefix=f".{prefix.name}-", suffix=".tar.zst")
    except OSError as exc:
        raise UsageError(f"cannot write in {options.output_dir}: {exc.strerror}; pick another -o DIR") from None
    os.close(fd)
    temp = Path(temp_name)
    try:
        if kind == "conda":
            packed_with = _conda_pack(prefix, temp, options, threads)
        else:
            packed_with = _venv_pack(prefix, temp, options, threads)
        sha256 = _sha256(temp)
        archive = options.output_dir / f"{prefix.name}-{sha256[:12]}.tar.zst"
        temp.replace(archive)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ClusterkitError(f"packing {prefix} into {options.output_dir} failed: {exc.strerror or exc}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    manifest = Manifest(
        kind=kind, prefix=str(prefix), archive=archive.name, size=archive.stat().st_size, sha256=sha256,
        unpacked_bytes=unpacked, files=files, python_version=str(probe["python"]),
        package_set={"python": probe["python_packages"]["sha256"], "python_count": probe["python_packages"]["count"],
                     "conda": probe["conda"]},
        imports=imports, fingerprint=fingerprint, base_python=base_interpreter(prefix) if kind == "venv" else None,
        shebangs=shebangs if kind == "conda" else [], dropped_files=dropped, notes=notes,
        source=source_id(prefix), packed_with=packed_with, pack_seconds=round(time.monotonic() - started, 3))
    written = manifest_path(archive).with_name(f".{manifest_path(archive).name}.tmp")
    try:
        written.write_text(manifest.to_json())
        written.replace(manifest_path(archive))
    except OSError as exc:
        written.unlink(missing_ok=True)
        raise ClusterkitError(f"writing {manifest_path(archive)} failed: {exc.strerror or exc}") from None
    return archive, manifest


def _check_output_dir(directory: Path) -> None:
    """``-o DIR`` exists (made if need be) and this user can write there: a UsageError before any work if not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {directory}: {exc.strerror}; pick another -o DIR") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write in {directory}: permission denied; pick another -o DIR")


def source_id(prefix: Path) -> dict[str, Any]:
    st = prefix.stat()
    return {"host": socket.gethostname(), "dev": st.st_dev, "ino": st.st_ino}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _conda_pack(prefix: Path, output: Path, options: PackOptions, threads: int) -> str:
    import conda_pack

    try:
        conda_pack.pack(prefix=str(prefix), output=str(output), format="tar.zst", force=True,
                        compress_level=options.level, n_threads=threads,
                        ignore_editable_packages=options.allow_editable,
                        ignore_missing_files=options.ignore_missing_files)
    except conda_pack.CondaPackException as exc:
        raise PackRefused(f"conda-pack refused {prefix}: {str(exc).strip()}") from None
    return f"conda-pack {conda_pack.__version__}, zstd level {options.level}, {threads} thread(s)"


def _venv_pack(prefix: Path, output: Path, options: PackOptions, threads: int) -> str:
    """A venv as it is (symlinks kept, absolute shebangs kept): it is unpacked at the same path."""
    import zstandard

    compressor = zstandard.ZstdCompressor(level=options.level, threads=threads)
    with open(output, "wb") as raw, compressor.stream_writer(raw) as stream, \
            tarfile.open(fileobj=stream, mode="w|") as tar:
        for root, dirs, names in os.walk(prefix):
            dirs.sort()
            for name in [*sorted(dirs), *sorted(names)]:
                path = Path(root, name)
                tar.add(path, arcname=str(path.relative_to(prefix)), recursive=False)
    return f"tar + zstandard {zstandard.__version__}, level {options.level}, {threads} thread(s)"
