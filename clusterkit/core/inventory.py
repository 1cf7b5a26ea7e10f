"""DeepSpeed hostfiles and ``--include``/``--exclude`` filters.

Semantics follow DeepSpeed's launcher (``deepspeed/launcher/runner.py``): one ``HOST slots=N`` per
line, ``#`` comments and blank lines skipped, file order is node rank, filters are
``NAME[:SLOT[,SLOT...]][@NAME...]``. clusterkit is stricter where DeepSpeed silently accepts
nonsense (``slots=4x`` read as 4, ``slots=0``, out-of-range slots) and every error names file:line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from clusterkit.errors import InputError, UsageError

_ENTRY = re.compile(r"^(?P<host>\S+)\s+slots=(?P<slots>\S*)(?P<rest>.*)$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+$")


@dataclass(frozen=True)
class HostEntry:
    """One hostfile line: a host, its slot count, and where it was written."""

    name: str
    slots: int
    line: int


@dataclass(frozen=True)
class Hostfile:
    """A parsed hostfile; ``hosts`` keeps file order, which is DeepSpeed's node rank order."""

    path: str
    hosts: tuple[HostEntry, ...]

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def entry(self, name: str) -> HostEntry:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)


@dataclass(frozen=True)
class ActiveHost:
    """A host that takes part in a run, with the slot indices it runs (after include/exclude)."""

    name: str
    slots: tuple[int, ...]
    entry: HostEntry


def parse_hostfile(text: str, path: str = "<hostfile>") -> Hostfile:
    """Parse hostfile text; raise :class:`InputError` naming ``path:line`` on the first bad line."""
    hosts: list[HostEntry] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("//") or line.startswith(";"):
            raise InputError(f"unknown comment syntax {line[:2]!r}; hostfile comments start with '#'",
                             path, lineno)
        match = _ENTRY.match(line)
        if match is None:
            raise InputError(f"bad entry {line!r}; expected 'HOSTNAME slots=N'", path, lineno)
        host, slots_text, rest = match.group("host", "slots", "rest")
        if not _HOSTNAME.match(host):
            raise InputError(f"bad hostname {host!r}", path, lineno)
        if not slots_text.isdigit():
            hint = ""
            digits = re.match(r"\d+", slots_text)
            if digits:
                hint = f" (DeepSpeed would silently read slots={digits.group()})"
            raise InputError(f"slots must be a whole number, got {slots_text!r}{hint}", path, lineno)
        rest = rest.strip()
        if rest and not rest.startswith("#"):
            raise InputError(f"unexpected text after slots: {rest!r}; use '#' for comments", path, lineno)
        slots = int(slots_text)
        if slots == 0:
            raise InputError(f"{host} has slots=0, which runs nothing there; remove the line or use "
                             "--exclude", path, lineno)
        if host in seen:
            raise InputError(f"duplicate host {host!r} (first on line {seen[host]})", path, lineno)
        seen[host] = lineno
        hosts.append(HostEntry(host, slots, lineno))
    if not hosts:
        raise InputError("hostfile has no 'HOSTNAME slots=N' entries", path)
    return Hostfile(path, tuple(hosts))


def load_hostfile(path: str | Path) -> Hostfile:
    """Read and parse a hostfile from disk."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("hostfile not found (DeepSpeed would silently run on this machine only)",
                         str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read hostfile: {exc}", str(p)) from None
    return parse_hostfile(text, str(p))


def _parse_filter(spec: str, flag: str) -> dict[str, list[int]]:
    """Parse ``NAME[:SLOT,...][@NAME...]`` into host -> sorted slots ([] means the whole host)."""
    result: dict[str, list[int]] = {}
    for part in spec.split("@"):
        if not part:
            raise UsageError(f"{flag} {spec!r}: empty node between '@' separators")
        name, sep, slot_text = part.partition(":")
        if not name:
            raise UsageError(f"{flag} {spec!r}: missing host name in {part!r}")
        slots: list[int] = []
        if sep and not slot_text:
            raise UsageError(f"{flag} {spec!r}: no slots after ':' for {name}")
        if sep:
            for item in slot_text.split(","):
                if not item.isdigit():
                    raise UsageError(f"{flag} {spec!r}: slot {item!r} on {name} is not a whole number")
                slots.append(int(item))
        result.setdefault(name, []).extend(slots)
    return {name: sorted(set(slots)) for name, slots in result.items()}


def select_hosts(hostfile: Hostfile, include: str = "", exclude: str = "") -> list[ActiveHost]:
    """Apply DeepSpeed's ``--include``/``--exclude`` to a hostfile, keeping hostfile order.

    Unknown hosts and slots outside ``0..slots-1`` are errors (DeepSpeed accepts some of them).
    """
    if include and exclude:
        raise UsageError("--include and --exclude are mutually exclusive (as in DeepSpeed)")
    pool = {h.name: list(range(h.slots)) for h in hostfile.hosts}
    spec, flag = (include, "--include") if include else (exclude, "--exclude")
    if not spec:
        return [ActiveHost(h.name, tuple(pool[h.name]), h) for h in hostfile.hosts]
    wanted = _parse_filter(spec, flag)
    for name, slots in wanted.items():
        if name not in pool:
            raise UsageError(f"{flag}: host {name!r} is not in {hostfile.path} "
                             f"(hosts: {', '.join(hostfile.names)})")
        for slot in slots:
            if slot not in pool[name]:
                raise UsageError(f"{flag}: {name} has slots 0..{len(pool[name]) - 1} in {hostfile.path}, "
                                 f"not slot {slot}")
    chosen: dict[str, list[int]] = {}
    if include:
        chosen = {name: (slots or pool[name]) for name, slots in wanted.items()}
    else:
        chosen = {name: list(slots) for name, slots in pool.items()}
        for name, slots in wanted.items():
            chosen[name] = [s for s in chosen[name] if slots and s not in slots]
    active = [ActiveHost(h.name, tuple(chosen[h.name]), h) for h in hostfile.hosts
              if chosen.get(h.name)]
    if not active:
        raise UsageError(f"{flag} {spec!r} leaves no hosts to run on")
    return active
