"""SSH trust as files say it: this user's keys, who may log in here, which host keys we know.

With these facts from every node the head can check all N x N login routes without making N x N SSH
connections: a route a -> b works when one of a's user keys is in b's authorized_keys and a's
known_hosts holds one of b's host keys under b's hostfile name. Keys are compared by OpenSSH's
SHA256 fingerprint. Hashed known_hosts entries (``|1|salt|hash``) and wildcard patterns are
understood. Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import re
from pathlib import Path
from typing import Iterable, Sequence

from clusterkit.node.collect.deadline import run_command
from clusterkit.node.facts import Maybe, SshTrustFacts, Unavailable, known

_KEY_TYPE = re.compile(r"^(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp\d+|sk-[a-z0-9@.-]+)$")
DEFAULT_HOST_KEYS = ("/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ecdsa_key", "/etc/ssh/ssh_host_rsa_key")


def fingerprint(key_b64: str) -> str | None:
    """OpenSSH's ``SHA256:...`` fingerprint of a base64 public key blob, or None if it is not base64."""
    try:
        blob = base64.b64decode(key_b64.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def key_fingerprints(lines: Iterable[str]) -> list[str]:
    """Fingerprints of the keys in public-key or authorized_keys lines (options and comments skipped)."""
    found = []
    for line in lines:
        words = line.strip().split()
        if not words or words[0].startswith("#"):
            continue
        for i, word in enumerate(words[:-1]):
            if _KEY_TYPE.match(word):
                fp = fingerprint(words[i + 1])
                if fp:
                    found.append(fp)
                break
    return found


def _read_lines(path: Path) -> Maybe[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        return Unavailable(f"cannot read {path}: {exc.strerror}")


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        parts = pattern.split("|")
        if len(parts) != 4:
            return False
        try:
            salt, digest = base64.b64decode(parts[2]), base64.b64decode(parts[3])
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)
    return fnmatch.fnmatchcase(name, pattern)


def known_host_entries(lines: Iterable[str], names: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """name -> (key type, fingerprint) of every key known_hosts ``lines`` accept for it.

    Negated patterns and ``@revoked`` keys are honoured; a name may have several keys, even of one
    type (OpenSSH accepts a host when any of them matches).
    """
    wanted = list(names)
    result: dict[str, list[tuple[str, str]]] = {name: [] for name in wanted}
    revoked: set[str] = set()
    for line in lines:
        words = line.strip().split()
        if not words or words[0].startswith("#"):
            continue
        marker = words.pop(0) if words[0].startswith("@") else ""
        if len(words) < 3 or marker == "@cert-authority":
            continue
        fp = fingerprint(words[2])
        if fp is None:
            continue
        if marker == "@revoked":
            revoked.add(fp)
            continue
        patterns = words[0].split(",")
        for name in wanted:
            negated = any(_matches(p[1:], name) for p in patterns if p.startswith("!"))
            if not negated and any(_matches(p, name) for p in patterns if not p.startswith("!")):
                result[name].append((words[1], fp))
    return {name: [key for key in keys if key[1] not in revoked] for name, keys in result.items()}


def known_host_keys(lines: Iterable[str], names: Iterable[str]) -> dict[str, list[str]]:
    """name -> fingerprints known_hosts ``lines`` accept for it (negated and revoked entries honoured)."""
    return {name: [fp for _, fp in keys] for name, keys in known_host_entries(lines, names).items()}


def sshd_host_key_paths(sshd_config: str = "/etc/ssh/sshd_config") -> list[str]:
    """Private host key paths sshd uses (``HostKey`` lines, ``Include``d files too), or OpenSSH's defaults."""
    paths: list[str] = []
    _host_key_lines(Path(sshd_config), paths, depth=0)
    return paths or list(DEFAULT_HOST_KEYS)


def _host_key_lines(config: Path, paths: list[str], depth: int) -> None:
    lines = _read_lines(config)
    if isinstance(lines, Unavailable) or depth > 8:
        return
    for line in lines:
        words = line.split()
        if len(words) == 2 and words[0].lower() == "hostkey":
            paths.append(words[1])
        elif len(words) >= 2 and words[0].lower() == "include":
            for pattern in words[1:]:  # relative patterns are under /etc/ssh, as sshd reads them
                full = pattern if pattern.startswith("/") else str(Path("/etc/ssh", pattern))
                for included in sorted(Path("/").glob(full.lstrip("/"))):
                    _host_key_lines(Path(included), paths, depth + 1)


def served_host_keys(addresses: Sequence[str], port: int, timeout_s: float = 3.0) -> Maybe[list[str]]:
    """Fingerprints of the host keys sshd really serves, read with ``ssh-keyscan`` (every key type).

    The key files under /etc/ssh are only a guess at what sshd serves: ``HostKey`` in an included file,
    ``sshd -h``/``-f`` or a config this user cannot read make them differ. The first address that
    answers wins (the one the head reached the node on, then loopback).
    """
    problems = []
    for address in addresses:
        result = run_command(["ssh-keyscan", "-T", str(max(1, int(timeout_s))), "-p", str(port), address],
                             timeout_s=timeout_s + 2)
        if not known(result):
            return result  # ssh-keyscan missing or hung: no address will do better
        found = key_fingerprints(result.stdout.splitlines())
        if found:
            return sorted(set(found))
        problems.append(f"{address}:{port}: {result.tail(1) or 'no keys'}")
    return Unavailable("ssh-keyscan got no host key from " + "; ".join(problems))


def collect_ssh_trust(home: str, peers: Iterable[str], sshd_config: str = "/etc/ssh/sshd_config",
                      system_known_hosts: str = "/etc/ssh/ssh_known_hosts",
                      served: Maybe[list[str]] | None = None) -> SshTrustFacts:
    """This node's side of every SSH route: its keys, authorized keys, host keys, known peers.

    ``served``: the host keys sshd serves (see :func:`served_host_keys`); without them the key files
    sshd_config names (or OpenSSH's defaults) stand in.
    """
    ssh = Path(home, ".ssh")
    user_keys: list[str] = []
    for path in sorted(ssh.glob("id_*.pub")):
        lines = _read_lines(path)
        if not isinstance(lines, Unavailable):
            user_keys += key_fingerprints(lines)
    authorized = _read_lines(ssh / "authorized_keys")
    host_keys: list[str] = []
    if served is not None and not isinstance(served, Unavailable):
        host_keys = list(served)
    else:
        for private in sshd_host_key_paths(sshd_config):
            lines = _read_lines(Path(private + ".pub"))
            if not isinstance(lines, Unavailable):
                host_keys += key_fingerprints(lines)
    known_lines: list[str] = []
    known: Maybe[dict[str, list[str]]] = {}
    for path in (ssh / "known_hosts", Path(system_known_hosts)):
        lines = _read_lines(path)
        if isinstance(lines, Unavailable):
            known = lines
            break
        known_lines += lines
    if not isinstance(known, Unavailable):
        known = known_host_keys(known_lines, peers)
    return SshTrustFacts(
        user_keys=user_keys,
        authorized_keys=authorized if isinstance(authorized, Unavailable) else key_fingerprints(authorized),
        host_keys=host_keys if host_keys else Unavailable("no readable sshd host public key"),
        known_hosts=known,
    )
