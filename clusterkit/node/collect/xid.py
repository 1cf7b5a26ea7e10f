"""NVIDIA XID events from the kernel log (``NVRM: Xid (PCI:0000:3b:00): 79, ... fallen off the bus.``).

The log is read with ``dmesg``, else ``/dev/kmsg`` (non-blocking), else ``journalctl -k``; when none
is readable (``dmesg_restrict`` without root, no journal access) the events are ``Unavailable`` with
every reason. Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import errno
import os
import re
import time

from clusterkit.node.collect.deadline import run_command
from clusterkit.node.collect.nvml import normalize_bus_id
from clusterkit.node.facts import Maybe, Unavailable, XidEvent

#: Only the most recent events are kept: a flapping GPU can log thousands.
MAX_EVENTS = 200

_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<bus>[0-9A-Fa-f]{1,8}:[0-9A-Fa-f]{1,2}:[0-9A-Fa-f]{1,2}(?:\.[0-7])?)\):"
    r"\s*(?P<code>\d+)\s*(?:,\s*(?P<rest>.*))?$")
# Newer drivers name the process: "pid=1234, name=python3, <message>" (pid may be '<unknown>').
_PROCESS = re.compile(r"^pid=(?:'[^']*'|[^,]*),\s*name=.*?,\s*(?P<message>.*)$")


def parse_xid_events(text: str) -> list[XidEvent]:
    """Every ``NVRM: Xid`` line in ``text`` (dmesg, journalctl or /dev/kmsg format), oldest first."""
    events: list[XidEvent] = []
    for raw_line in text.splitlines():
        match = _XID.search(raw_line)
        if not match:
            continue
        rest = (match.group("rest") or "").strip()
        process = _PROCESS.match(rest)
        message = process.group("message") if process else rest
        events.append(XidEvent(
            bus_id=normalize_bus_id(match.group("bus")),
            code=int(match.group("code")),
            message=message.strip(),
            raw=raw_line.strip(),
        ))
    return events[-MAX_EVENTS:]


def read_kernel_log(timeout_s: float, kmsg_path: str = "/dev/kmsg") -> Maybe[str]:
    """The kernel ring buffer as text, from the first source that can be read."""
    problems: list[str] = []
    dmesg = run_command(["dmesg"], timeout_s)
    if isinstance(dmesg, Unavailable):
        problems.append(dmesg.reason)
    elif dmesg.ok:
        return dmesg.stdout
    else:
        problems.append("dmesg: " + (dmesg.tail(1) or f"exit status {dmesg.returncode}"))
    kmsg = read_dev_kmsg(timeout_s, kmsg_path)
    if not isinstance(kmsg, Unavailable):
        return kmsg
    problems.append(kmsg.reason)
    journal = run_command(["journalctl", "-k", "-q", "--no-pager"], timeout_s)
    if isinstance(journal, Unavailable):
        problems.append(journal.reason)
    elif journal.ok:
        return journal.stdout
    else:
        problems.append("journalctl -k: " + (journal.tail(1) or f"exit status {journal.returncode}"))
    return Unavailable("kernel log unreadable: " + "; ".join(problems))


def read_dev_kmsg(timeout_s: float, path: str = "/dev/kmsg") -> Maybe[str]:
    """Every record in ``/dev/kmsg`` now, read without blocking (one record per read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return Unavailable(f"{path}: {exc.strerror or exc}")
    records: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                record = os.read(fd, 16384)
            except BlockingIOError:
                break  # caught up with the newest record
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue  # records were overwritten while we read; carry on with the next
                if not records:
                    return Unavailable(f"{path}: {exc.strerror or exc}")
                break
            if not record:
                break
            records.append(record.decode("utf-8", "replace"))
    finally:
        os.close(fd)
    return "".join(records)


def collect_xid_events(timeout_s: float) -> Maybe[list[XidEvent]]:
    """XID events since boot, or why the kernel log could not be read."""
    text = read_kernel_log(timeout_s)
    if isinstance(text, Unavailable):
        return text
    return parse_xid_events(text)
