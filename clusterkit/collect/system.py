"""Host identity, CPU/RAM/NUMA, /dev/shm, ulimits and disks, read from /proc, /sys and the stdlib.

Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import platform
import socket
import sys
import time

from clusterkit.facts import HostFacts, Maybe, SystemFacts, Unavailable


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


def collect_system(options: object) -> SystemFacts:
    raise NotImplementedError("system collector not written yet")
