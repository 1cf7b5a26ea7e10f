"""What a push makes of its survey: which nodes share a directory, whether a node's copy is this env, and
whether it can take one. Pure: the survey's answers in, judgements out (``push`` acts on them).

- Sharing is found by content: every node (and the head, first) writes a token of this run beside the
  prefix and in the staging directory, then lists the tokens there. Of two nodes that share a
  directory, the one that lists last sees the other's token, so the sightings of all nodes, joined,
  give the same groups however the nodes raced; a node never deletes its token before every node has
  listed (``forget`` runs after every survey).
- A copy is judged by what it holds now, not by its marker alone: the marker names the archive, the
  env's own interpreter gives its package set, version and prefix, and the files it holds are counted
  against what the marker recorded at unpack. Only what clusterkit installed (or an empty directory) is
  replaced; anything else only with ``--replace-existing``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from clusterkit.envpack.pack import Manifest
from clusterkit.node import env_unpack as node_env
from clusterkit.node.relay_hop import human as human_bytes

HEAD = node_env.HEAD


def share_groups(hosts: Sequence[str], sightings: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    """host -> every name (hosts, and the head as ``HEAD``) known to see the same directory, itself included.

    ``sightings``: per host, the names whose tokens it saw (in any listing). Seeing is symmetric and
    transitive (it is one directory), so the groups are the connected sets of sightings.
    """
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for host in hosts:
        root(host)
        for seen in sightings.get(host, ()):
            parent[root(seen)] = root(host)
    members: dict[str, set[str]] = {}
    for name in list(parent):
        members.setdefault(root(name), set()).add(name)
    return {host: frozenset(members[root(host)]) for host in hosts}


def head_holds_source(manifest: Manifest) -> bool:
    """Whether this machine packed the archive and still has that very directory at the prefix."""
    source = manifest.source
    try:
        st = Path(manifest.prefix).stat()
    except OSError:
        return False
    if _unpacked_from(_read_marker(Path(manifest.prefix)), manifest):
        return False
    return (source.get("host") == socket.gethostname() and source.get("dev") == st.st_dev
            and source.get("ino") == st.st_ino)


def node_holds_source(info: Mapping[str, Any], manifest: Manifest) -> bool:
    """Whether the node is the machine the archive was packed on, and its prefix is that directory."""
    return (bool(manifest.source) and info.get("source") == manifest.source
            and not _unpacked_from(info.get("installed"), manifest))


def _unpacked_from(marker: object, manifest: Manifest) -> bool:
    """Whether an install marker says its directory was unpacked from this very archive.

    Such a directory is never the one the archive was packed from, even where it sits at the same device
    and inode: a prefix removed and installed again often gets its old inode number back."""
    return isinstance(marker, dict) and marker.get("sha256") == manifest.sha256


def _read_marker(prefix: Path) -> object:
    try:
        return json.loads((prefix / node_env.INSTALLED_MARKER).read_text())
    except (OSError, ValueError):
        return None


def verification_problems(found: Mapping[str, Any], manifest: Manifest, imports: bool = True) -> list[str]:
    """What differs between a node's verify result and the head's manifest (empty: all good).

    ``imports``: also whether torch/deepspeed import as on the head (the survey's check leaves them out).
    """
    problems = []
    if found.get("prefix") != manifest.prefix:
        problems.append(f"sys.prefix is {found.get('prefix')}, not {manifest.prefix}")
    if found.get("python") != manifest.python_version:
        problems.append(f"Python {found.get('python')}, the head's env has {manifest.python_version}")
    packages = found.get("python_packages") or {}
    if packages.get("sha256") != manifest.package_set.get("python"):
        problems.append(f"Python package set differs from the head's ({packages.get('count')} vs "
                        f"{manifest.package_set.get('python_count')} distributions)")
    if found.get("conda") != manifest.package_set.get("conda"):
        problems.append("conda package set (conda-meta) differs from the head's")
    return problems + (import_problems(found, manifest) if imports else [])


def import_problems(found: Mapping[str, Any], manifest: Manifest) -> list[str]:
    problems = []
    for name, version in sorted(manifest.imports.items()):
        got = (found.get("imports") or {}).get(name) or {}
        if "error" in got:
            problems.append(f"import {name} fails: {got['error']}")
        elif got.get("version") != version:
            problems.append(f"{name} {got.get('version')} (head: {version})")
    return problems


def copy_problems(info: Mapping[str, Any], manifest: Manifest) -> list[str]:
    """Why the env at a node's prefix is not the archive's (empty: it is), from what the survey found there."""
    state = (info.get("at_prefix") or {}).get("state")
    installed = info.get("installed") or {}
    if state == node_env.CLUSTERKIT and (installed.get("sha256") != manifest.sha256
                                         or installed.get("package_set") != manifest.package_set):
        return [f"another build of the env (from archive sha256 {str(installed.get('sha256'))[:12]}...)"]
    env = info.get("env") or {}
    if "error" in env:
        return [str(env["error"])]
    problems = verification_problems(env, manifest, imports=False)
    tree, recorded = env.get("tree"), installed.get("tree")
    if state == node_env.CLUSTERKIT and isinstance(tree, dict) and isinstance(recorded, dict) and tree != recorded:
        problems.append(f"it holds {tree.get('files')} files ({human_bytes(tree.get('bytes', 0))}), "
                        f"{recorded.get('files')} ({human_bytes(recorded.get('bytes', 0))}) when it was unpacked")
    return problems


def foreign_refusal(host: str, info: Mapping[str, Any], prefix: str, push_command: str) -> tuple[str, str]:
    """The error and fix for a prefix holding what clusterkit did not install."""
    at_prefix = info.get("at_prefix") or {}
    sample = ", ".join(at_prefix.get("sample") or [])
    what = f"{at_prefix.get('what', 'something')}{f' ({sample}...)' if sample else ''}"
    return (f"{prefix} on {host} holds {what} that clusterkit did not install, and it is not this env: not replaced",
            f"move it away on {host} (or pick another prefix), or {push_command} --replace-existing: it is then "
            f"moved aside to {Path(prefix).name}.clusterkit-replaced-DATE beside it, never deleted")


def cannot_install(host: str, info: Mapping[str, Any], manifest: Manifest) -> tuple[str, str] | None:
    """Why ``host`` cannot take the env (tools, base interpreter, a writable parent, room), with the fix."""
    parent = info.get("parent", "?")
    if not info.get("tar") or not info.get("zstd"):
        missing = " and ".join(t for t in ("tar", "zstd") if not info.get(t))
        return (f"{missing} not found on {host} (needed to unpack a .tar.zst)",
                f"on {host}: sudo apt-get install -y {missing} (RHEL: sudo dnf install -y {missing})")
    if manifest.base_python and info.get("base_python") is False:
        return (f"the venv's base interpreter {manifest.base_python} does not exist on {host}: a venv is not "
                "relocatable and runs only where its base interpreter sits at the same path",
                f"install the same Python at {manifest.base_python} on {host} (or pack a conda env instead)")
    prefix_parent = Path(manifest.prefix).parent
    if not info.get("writable"):
        if prefix_parent == prefix_parent.parent:  # the env sits directly under /
            fix = (f"on {host}, push as a user who may write in / (root), or give the env a directory of its own "
                   f"(e.g. /opt/envs/{Path(manifest.prefix).name}: sudo mkdir -p /opt/envs && sudo chown $USER "
                   "/opt/envs), pack it there and push that")
        else:
            fix = f"on {host}: sudo mkdir -p {prefix_parent} && sudo chown $USER {prefix_parent}"
        return f"cannot create {manifest.prefix} on {host}: {parent} is not writable by this user", fix
    return _no_space(host, info, manifest)


def _no_space(host: str, info: Mapping[str, Any], manifest: Manifest) -> tuple[str, str] | None:
    """Room for the archive where it is staged and for the unpacked env beside the prefix: one sum where
    both are on one filesystem, each on its own otherwise (``--staging`` on another disk)."""
    parent = info.get("parent", "?")
    staging = info.get("staging") or {}
    archive = 0 if staging.get("staged_bytes") == manifest.size else manifest.size
    unpacked = manifest.unpacked_bytes
    free = int(info.get("free") or 0)
    if staging and not staging.get("writable"):
        return (f"cannot write the archive on {host}: {staging.get('dir')} is not writable by this user",
                f"push with --staging DIR writable by this user on {host}")
    if not staging or staging.get("fs") == info.get("fs"):
        needed = archive + unpacked
        if free >= needed:
            return None
        fix = f"free {human_bytes(needed - free)} under {parent} on {host}"
        if free >= unpacked and archive:  # the env alone fits: the archive can go elsewhere
            fix += ", or push with --staging DIR on another disk"
        return (f"no space on {host}: {parent} has {human_bytes(free)} free, the env needs {human_bytes(needed)} "
                f"(archive {human_bytes(archive)} + unpacked {human_bytes(unpacked)})", fix)
    if free < unpacked:
        return (f"no space on {host}: {parent} has {human_bytes(free)} free, the unpacked env needs "
                f"{human_bytes(unpacked)}", f"free {human_bytes(unpacked - free)} under {parent} on {host}")
    staging_free = int(staging.get("free") or 0)
    if staging_free < archive:
        return (f"no space on {host} for the archive: {staging.get('dir')} has {human_bytes(staging_free)} free, "
                f"the archive needs {human_bytes(archive)}",
                f"free {human_bytes(archive - staging_free)} under {staging.get('dir')} on {host}, or push with "
                "--staging DIR on a disk with room")
    return None
