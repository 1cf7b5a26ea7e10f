"""Host identity, CPU/RAM/NUMA, /dev/shm, ulimits and disks, read from /proc, /sys and the stdlib.

Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import os
import platform
import posixpath
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from clusterkit.node.collect.deadline import call_with_deadline
from clusterkit.node.collect.options import CollectOptions
from clusterkit.node.facts import (
    DiskFacts,
    HostFacts,
    Maybe,
    NumaNodeFacts,
    ResourceLimit,
    SystemFacts,
    Unavailable,
    known,
)


def _os_name() -> Maybe[str]:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError as exc:
        return Unavailable(f"cannot read /etc/os-release: {exc.strerror}")
    return Unavailable("/etc/os-release has no PRETTY_NAME")


def _uptime() -> Maybe[float]:
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        return Unavailable(f"cannot read /proc/uptime: {exc}")


def collect_host() -> HostFacts:
    """Who this node is, and its wall clock right now (for skew between nodes)."""
    uname = platform.uname()
    return HostFacts(
        hostname=socket.gethostname(),
        fqdn=socket.getfqdn(),
        kernel=uname.release,
        arch=uname.machine,
        os_name=_os_name(),
        agent_python="{}.{}.{}".format(*sys.version_info[:3]),
        clock_unix=time.time(),
        uptime_s=_uptime(),
    )


# ------------------------------------------------------------------------------------ CPU and memory


def parse_cpuinfo(text: str) -> tuple[Maybe[str], Maybe[int]]:
    """CPU model and number of ``processor`` entries from ``/proc/cpuinfo`` text."""
    model: str | None = None
    processors = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "processor":
            processors += 1
        elif model is None and key in _MODEL_KEYS and value.strip():
            model = " ".join(value.split())
    return (
        model if model is not None else Unavailable("no 'model name' line in /proc/cpuinfo"),
        processors if processors else Unavailable("no 'processor' lines in /proc/cpuinfo"),
    )


# "model name" on x86; ARM and POWER kernels use other keys.
_MODEL_KEYS = ("model name", "cpu model", "cpu", "hardware")


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` (or a NUMA node's ``meminfo``) as bytes by key (``MemTotal``...)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        # "MemTotal:  5597388 kB" or, per NUMA node, "Node 0 MemTotal:  5597388 kB".
        match = re.match(r"^(?:Node\s+\d+\s+)?(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+(kB))?\s*$", line)
        if match:
            number = int(match.group(2))
            values[match.group(1)] = number * 1024 if match.group(3) else number
    return values


def _meminfo_value(values: dict[str, int], key: str, source: str) -> Maybe[int]:
    return values[key] if key in values else Unavailable(f"no {key} in {source}")


def read_numa_nodes(sysfs_root: str = "/sys") -> Maybe[list[NumaNodeFacts]]:
    """NUMA nodes from ``/sys/devices/system/node/node*``: CPU list and memory."""
    base = Path(sysfs_root, "devices/system/node")
    try:
        entries = [p for p in base.iterdir() if re.match(r"^node\d+$", p.name)]
    except OSError as exc:
        return Unavailable(f"cannot list {base}: {exc.strerror} (kernel without NUMA support?)")
    nodes = []
    for entry in sorted(entries, key=lambda p: int(p.name[4:])):
        cpulist = _read_text(entry / "cpulist")
        meminfo = _read_text(entry / "meminfo")
        mem_total: Maybe[int]
        if known(meminfo):
            mem_total = _meminfo_value(parse_meminfo(meminfo), "MemTotal", str(entry / "meminfo"))
        else:
            mem_total = meminfo
        nodes.append(NumaNodeFacts(
            node_id=int(entry.name[4:]),
            cpulist=cpulist.strip() if known(cpulist) else "",
            mem_total_bytes=mem_total,
        ))
    if not nodes:
        return Unavailable(f"no node* directories in {base}")
    return nodes


def _read_text(path: Path, limit: int = 1 << 20) -> Maybe[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError as exc:
        return Unavailable(f"cannot read {path}: {exc.strerror or exc}")


# ------------------------------------------------------------------------------------------- limits

#: ulimit name -> resource constant name. memlock and stack are in bytes (``ulimit`` shows kbytes).
LIMITS = (("memlock", "RLIMIT_MEMLOCK"), ("nofile", "RLIMIT_NOFILE"),
          ("nproc", "RLIMIT_NPROC"), ("stack", "RLIMIT_STACK"))


def read_limits() -> Maybe[list[ResourceLimit]]:
    """This process's ulimits (over SSH: exactly what the launcher's shell gets); ``None`` = unlimited."""
    try:
        import resource
    except ImportError as exc:
        return Unavailable(f"no resource module: {exc}")
    limits = []
    for name, constant in LIMITS:
        number = getattr(resource, constant, None)
        if number is None:
            continue
        try:
            soft, hard = resource.getrlimit(number)
        except (OSError, ValueError):
            continue
        limits.append(ResourceLimit(name=name, soft=_limit_value(soft, resource.RLIM_INFINITY),
                                    hard=_limit_value(hard, resource.RLIM_INFINITY)))
    return limits if limits else Unavailable("getrlimit answered for none of " + ", ".join(
        name for name, _ in LIMITS))


def _limit_value(value: int, infinity: int) -> int | None:
    return None if value == infinity or value < 0 else value


# ------------------------------------------------------------------------------------ mounts, disks


@dataclass
class MountEntry:
    """One line of ``/proc/self/mounts``."""

    device: str
    mount_point: str
    fstype: str


def _unescape_mount_field(field: str) -> str:
    # The kernel writes space, tab, newline and backslash in paths as octal escapes ("\040").
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[MountEntry]:
    """``/proc/self/mounts`` text as entries, in file order (later entries shadow earlier ones)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1].startswith("/"):
            mounts.append(MountEntry(device=_unescape_mount_field(fields[0]),
                                     mount_point=_unescape_mount_field(fields[1]),
                                     fstype=_unescape_mount_field(fields[2])))
    return mounts


def find_mount(mounts: list[MountEntry], path: str) -> Maybe[MountEntry]:
    """The mount holding absolute ``path``: the longest matching mount point, the last one on ties."""
    best: MountEntry | None = None
    for entry in mounts:
        point = entry.mount_point.rstrip("/") or "/"
        inside = point == "/" or path == point or path.startswith(point + "/")
        if inside and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = entry
    if best is None:
        return Unavailable(f"no mount in /proc/self/mounts holds {path}")
    return best


def _nearest_existing(path: str) -> str:
    candidate = Path(path)
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    return str(candidate.resolve())


def _existing_and_statvfs(path: str) -> tuple[str, os.statvfs_result]:
    existing = _nearest_existing(path)
    return existing, os.statvfs(existing)


def disk_facts(purpose: str, path: str, mounts: Maybe[list[MountEntry]],
               timeout_s: float = 2.0) -> DiskFacts:
    """Filesystem facts for ``path`` (its nearest existing ancestor, symlinks resolved).

    ``statvfs`` on a dead NFS server blocks forever, so it runs behind a deadline; the mount is then
    still found from the path as written, which usually names the culprit (``nfs``).
    """
    probed = call_with_deadline(lambda: _existing_and_statvfs(path), timeout_s, f"statvfs {path}")
    total: Maybe[int]
    free: Maybe[int]
    if known(probed):
        lookup, stats = probed
        total = stats.f_frsize * stats.f_blocks
        free = stats.f_frsize * stats.f_bavail
    else:
        lookup = posixpath.normpath(str(Path(path).absolute()))
        total = free = probed
    mount_point: Maybe[str]
    fstype: Maybe[str]
    if not known(mounts):
        mount_point = fstype = mounts
    else:
        entry = find_mount(mounts, lookup)
        mount_point = entry.mount_point if known(entry) else entry
        fstype = entry.fstype if known(entry) else entry
    return DiskFacts(purpose=purpose, path=path, mount_point=mount_point, fstype=fstype,
                     total_bytes=total, free_bytes=free)


def measure_disks(targets: list[tuple[str, str]], mounts: Maybe[list[MountEntry]],
                  timeout_s: float = 2.0) -> list[DiskFacts]:
    """:func:`disk_facts` for every (purpose, path) at once: several dirs on one dead NFS server cost
    one deadline, not one each."""
    results: list[DiskFacts | None] = [None] * len(targets)

    def measure(index: int, purpose: str, path: str) -> None:
        results[index] = disk_facts(purpose, path, mounts, timeout_s)

    threads = [threading.Thread(target=measure, args=(i, purpose, path), name="disk:" + purpose, daemon=True)
               for i, (purpose, path) in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s + 1.0)
    late = Unavailable(f"not measured within {timeout_s + 1.0:g}s")
    return [result if result is not None else DiskFacts(purpose, path, late, late, late, late)
            for result, (purpose, path) in zip(results, targets)]


def disk_targets(cwd: str, environ: Mapping[str, str], home: str) -> list[tuple[str, str]]:
    """(purpose, path) for every directory a DeepSpeed job writes to, resolved like the tools do.

    torch builds JIT extensions in ``$TORCH_EXTENSIONS_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/
    torch_extensions``; Triton caches in ``$TRITON_CACHE_DIR`` or ``${TRITON_HOME:-~}/.triton/cache``.
    """
    cache_home = environ.get("XDG_CACHE_HOME") or str(Path(home, ".cache"))
    triton_home = environ.get("TRITON_HOME") or home
    return [
        ("root", "/"),
        ("home", home),
        ("tmp", environ.get("TMPDIR") or "/tmp"),
        ("cwd", cwd),
        ("torch_extensions",
         environ.get("TORCH_EXTENSIONS_DIR") or str(Path(cache_home, "torch_extensions"))),
        ("triton_cache", environ.get("TRITON_CACHE_DIR") or str(Path(triton_home, ".triton", "cache"))),
    ]


# ------------------------------------------------------------------------------------------ section


def collect_system(options: CollectOptions, proc_root: str = "/proc", sysfs_root: str = "/sys",
                   shm_path: str = "/dev/shm", environ: Mapping[str, str] | None = None,
                   disk_timeout_s: float = 2.0) -> SystemFacts:
    """CPU, memory, NUMA, /dev/shm, ulimits and the disks a job writes to."""
    env = os.environ if environ is None else environ
    home = env.get("HOME") or str(Path.home())

    cpuinfo = _read_text(Path(proc_root, "cpuinfo"))
    if known(cpuinfo):
        cpu_model, processors = parse_cpuinfo(cpuinfo)
    else:
        cpu_model = processors = cpuinfo
    cpu_count = os.cpu_count()
    logical_cpus: Maybe[int] = processors if known(processors) or cpu_count is None else cpu_count

    meminfo_text = _read_text(Path(proc_root, "meminfo"))
    meminfo = parse_meminfo(meminfo_text) if known(meminfo_text) else {}

    def memory(key: str) -> Maybe[int]:
        if not known(meminfo_text):
            return meminfo_text
        return _meminfo_value(meminfo, key, str(Path(proc_root, "meminfo")))

    mounts_text = _read_text(Path(proc_root, "self/mounts"))
    mounts: Maybe[list[MountEntry]] = parse_mounts(mounts_text) if known(mounts_text) else mounts_text
    targets = [("shm", shm_path), *disk_targets(options.cwd, env, home)]
    disks = measure_disks(targets, mounts, disk_timeout_s)
    shm: Maybe[DiskFacts] = disks[0] if Path(shm_path).exists() else Unavailable(f"{shm_path} does not exist")
    return SystemFacts(
        cpu_model=cpu_model,
        logical_cpus=logical_cpus,
        numa_nodes=read_numa_nodes(sysfs_root),
        mem_total_bytes=memory("MemTotal"),
        mem_available_bytes=memory("MemAvailable"),
        swap_total_bytes=memory("SwapTotal"),
        shm=shm,
        limits=read_limits(),
        disks=disks[1:],
    )
