"""Put a packed env on every node at the same absolute path, and prove it runs there.

1. survey every node in parallel: is the env there already (its marker names the archive's sha256 and
   package set), is there room and a writable parent, are tar and zstd there, does a venv's base
   interpreter exist; nodes that see each other's survey marker share the env's directory (one
   filesystem) and get it once;
2. broadcast the archive to the nodes that need it (``transfer.broadcast``: a pipelined relay,
   checksummed on every node, resumed, routed around dead nodes);
3. unpack on each of them in parallel (temporary directory, conda-unpack with the env's python, rename);
4. verify with the env's own interpreter: it starts, its package set matches the head's, and torch and
   deepspeed import where they do on the head.

How nodes are reached is a :class:`NodeChannel`: over SSH (:class:`SshChannel`, the relay above), or
through Slurm (:class:`clusterkit.envpack.slurm_push.SlurmChannel`: one srun step per stage, sbcast).
The stages and their judgement are the same whichever carries them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clusterkit.envpack.pack import Manifest, node_env_command, parse_node_env_output
from clusterkit.remote import HostResult, RemoteError, SshSettings, connect, fan_out
from clusterkit.remote.relay_hop import human as human_bytes
from clusterkit.remote.transfer import (
    Delivery,
    Listener,
    RemoteFile,
    broadcast,
    relay_options,
)

UP_TO_DATE, INSTALLED, WOULD_INSTALL, SHARED, FAILED = "up to date", "installed", "would install", "shared", "failed"


@dataclass(frozen=True)
class PushOptions:
    staging_dir: str | None = None  #: default: PREFIX's parent/.clusterkit-envpack
    dry_run: bool = False
    verify_only: bool = False
    stall_s: float = 30.0
    survey_timeout_s: float = 60.0
    unpack_timeout_s: float = 900.0
    verify_timeout_s: float = 300.0
    max_rounds: int = 3
    python: str = "python3"
    remove_archive: bool = False


@dataclass
class NodeResult:
    """One node's outcome of a push (or a verify)."""

    host: str
    status: str
    actions: list[str] = field(default_factory=list)
    error: str | None = None
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != FAILED


@dataclass
class PushReport:
    nodes: dict[str, NodeResult]
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [h for h, r in self.nodes.items() if not r.ok]


def staging_path(manifest: Manifest, options: PushOptions) -> str:
    directory = options.staging_dir or f"{Path(manifest.prefix).parent}/.clusterkit-envpack"
    return f"{directory.rstrip('/')}/{manifest.archive}"


def _run_node_env(conn: Any, python: str, spec: dict[str, Any], timeout_s: float, isolated: bool = True
                  ) -> dict[str, Any]:
    result = conn.run(node_env_command(python, spec, isolated_site=isolated), hide=True, warn=True, timeout=timeout_s)
    return node_env_result(conn.host, python, int(result.exited), str(result.stdout), str(result.stderr), spec["op"])


def node_env_result(host: str, python: str, exit_code: int, stdout: str, stderr: str, op: str) -> dict[str, Any]:
    """node_env's JSON answer from what its command printed on ``host``; RemoteError when there is none."""
    if exit_code == 127:
        raise RemoteError(f"{host}: {python} not found", fix=f"install python3 on {host}"
                          if python == "python3" else None)
    try:
        return parse_node_env_output(stdout, f"{op} on {host}")
    except Exception as exc:
        tail = " | ".join(stderr.strip().splitlines()[-2:])
        raise RemoteError(f"{exc}{': ' + tail if tail else ''}") from None


class NodeChannel(Protocol):
    """How a push reaches its nodes: runs node_env's operations there, and delivers the archive."""

    #: The command that redoes a push this way (in fixes).
    push_command: str

    def run_op(self, hosts: Sequence[str], python: str, spec: dict[str, Any], timeout_s: float,
               isolated: bool = True) -> dict[str, HostResult[dict[str, Any]]]:
        """node_env ``spec`` (the same for every host; each fills in its ``host``) run with ``python``."""
        ...

    def deliver(self, archive: Path, remote: RemoteFile, hosts: list[str], say: Callable[[str], None],
                listener: Listener | None, round_listener: Callable[[int, list[str], int], None] | None
                ) -> tuple[dict[str, Delivery], str]:
        """The archive onto ``hosts`` (each copy checked); per-host deliveries and the path to unpack from."""
        ...


@dataclass
class SshChannel:
    """Nodes over SSH from the head; the archive by the pipelined relay."""

    settings: SshSettings
    options: PushOptions
    push_command: str = "clusterkit env push HOSTFILE ARCHIVE"

    def run_op(self, hosts: Sequence[str], python: str, spec: dict[str, Any], timeout_s: float,
               isolated: bool = True) -> dict[str, HostResult[dict[str, Any]]]:
        def task(host: str) -> dict[str, Any]:
            with connect(host, self.settings) as conn:
                return _run_node_env(conn, python, {**spec, "host": host}, timeout_s, isolated)

        return fan_out(list(hosts), task, timeout_s, settings=self.settings)

    def deliver(self, archive: Path, remote: RemoteFile, hosts: list[str], say: Callable[[str], None],
                listener: Listener | None, round_listener: Callable[[int, list[str], int], None] | None
                ) -> tuple[dict[str, Delivery], str]:
        say(f"broadcast {human_bytes(remote.size)} to {len(hosts)} node(s) (relay: head -> "
            f"{' -> '.join(hosts[:4])}{' -> ...' if len(hosts) > 4 else ''})")
        options = self.options
        relaying = relay_options(self.settings, python=options.python, stall_s=options.stall_s,
                                 probe_timeout_s=options.survey_timeout_s, max_rounds=options.max_rounds)
        return broadcast(archive, remote, hosts, self.settings, relaying, listener, round_listener), remote.path


def push_env(archive: Path, manifest: Manifest, hosts: Sequence[str], settings: SshSettings | NodeChannel,
             options: PushOptions, listener: Listener | None = None,
             phase: Callable[[str], None] | None = None,
             round_listener: Callable[[int, list[str], int], None] | None = None) -> PushReport:
    """Make ``manifest``'s env present and verified on every host; per-host outcomes, never an exception.

    ``settings``: SSH settings (the nodes over SSH), or a :class:`NodeChannel` that reaches them another way."""
    channel = SshChannel(settings, options) if isinstance(settings, SshSettings) else settings
    say = phase or (lambda _text: None)
    report = PushReport({h: NodeResult(h, FAILED) for h in hosts})
    run_id = uuid.uuid4().hex[:12]
    prefix = manifest.prefix
    say(f"survey: is {prefix} there, room for {human_bytes(manifest.size + manifest.unpacked_bytes)}, tools")
    surveys = channel.run_op(hosts, options.python, {"op": "survey", "prefix": prefix, "run": run_id,
                                                     "base_python": manifest.base_python}, options.survey_timeout_s)
    reachable = [h for h in hosts if surveys[h].ok and surveys[h].value is not None]
    for host in hosts:
        if host not in reachable:
            report.nodes[host] = NodeResult(host, FAILED, error=surveys[host].error, fix=surveys[host].fix)
    groups = _shared_groups(reachable, run_id, prefix, channel, options)
    need: list[str] = []
    for host in reachable:
        info = surveys[host].value or {}
        leader = groups.get(host, host)
        result = report.nodes[host]
        if leader != host:
            result.status = SHARED
            result.actions.append(f"{Path(prefix).parent} is shared with {leader}: installed once, through it")
            continue
        installed = info.get("installed") or {}
        if manifest.source and info.get("source") == manifest.source:
            result.status = UP_TO_DATE
            result.actions.append(f"{prefix} is the env the archive was packed from")
            continue
        if installed.get("sha256") == manifest.sha256 and installed.get("package_set") == manifest.package_set:
            result.status = UP_TO_DATE
            result.actions.append(f"{prefix} already holds this env")
            continue
        if options.verify_only:
            result.status = FAILED
            result.error = f"{prefix} on {host} is " + ("another build of the env" if installed else "missing")
            result.fix = channel.push_command.replace("ARCHIVE", str(archive))
            continue
        problem = _cannot_install(host, info, manifest)
        if problem:
            result.error, result.fix = problem
            continue
        if options.dry_run:
            result.status = WOULD_INSTALL
            result.actions.append(f"would send {human_bytes(manifest.size)} and unpack to {prefix}")
            continue
        need.append(host)
    if need:
        remote = RemoteFile(staging_path(manifest, options), manifest.size, manifest.sha256)
        report.deliveries, unpack_from = channel.deliver(archive, remote, need, say, listener, round_listener)
        landed = []
        for host in need:
            delivery = report.deliveries[host]
            result = report.nodes[host]
            result.actions += delivery.notes
            if delivery.ok:
                landed.append(host)
                sent = "resumed, " if delivery.resumed_from else ""
                result.actions.append(f"archive there ({sent}{human_bytes(delivery.sent_bytes)} sent, "
                                      f"round {delivery.rounds or 1})")
            else:
                result.error, result.fix = delivery.error, delivery.fix
        if landed:
            say(f"unpack to {prefix} on {len(landed)} node(s)")
            _unpack(landed, unpack_from, manifest, channel, options, report)
    to_verify = [h for h in reachable if report.nodes[h].status in (INSTALLED, SHARED)
                 or (options.verify_only and report.nodes[h].status == UP_TO_DATE)]
    for host in list(to_verify):
        leader = groups.get(host, host)
        if leader != host and report.nodes[leader].status == FAILED:
            report.nodes[host].status = FAILED
            report.nodes[host].error = f"{leader}, which installs the shared {prefix}, failed"
            to_verify.remove(host)
    if to_verify and not options.dry_run:
        say(f"verify on {len(to_verify)} node(s): {prefix}/bin/python starts, package set, "
            f"{', '.join(manifest.imports) or 'no torch/deepspeed'} import")
        verify_nodes(to_verify, manifest, channel, options, report)
    return report


def _cannot_install(host: str, info: dict[str, Any], manifest: Manifest) -> tuple[str, str] | None:
    parent = info.get("parent", "?")
    if not info.get("tar") or not info.get("zstd"):
        missing = " and ".join(t for t in ("tar", "zstd") if not info.get(t))
        return (f"{missing} not found on {host} (needed to unpack a .tar.zst)",
                f"on {host}: sudo apt-get install -y {missing} (RHEL: sudo dnf install -y {missing})")
    if manifest.base_python and info.get("base_python") is False:
        return (f"the venv's base interpreter {manifest.base_python} does not exist on {host}: a venv is not "
                "relocatable and runs only where its base interpreter sits at the same path",
                f"install the same Python at {manifest.base_python} on {host} (or pack a conda env instead)")
    if not info.get("writable"):
        return (f"cannot create {manifest.prefix} on {host}: {parent} is not writable by this user",
                f"on {host}: sudo mkdir -p {Path(manifest.prefix).parent} && sudo chown $USER "
                f"{Path(manifest.prefix).parent}")
    needed = manifest.size + manifest.unpacked_bytes
    free = int(info.get("free") or 0)
    if free < needed:
        return (f"no space on {host}: {parent} has {human_bytes(free)} free, the env needs {human_bytes(needed)} "
                f"(archive {human_bytes(manifest.size)} + unpacked {human_bytes(manifest.unpacked_bytes)})",
                f"free {human_bytes(needed - free)} under {parent} on {host}, or push with --staging DIR on "
                "another disk")
    return None


def _shared_groups(hosts: list[str], run_id: str, prefix: str, channel: NodeChannel, options: PushOptions
                   ) -> dict[str, str]:
    """host -> the first host (hostfile order) that sees the same directory beside the prefix."""
    looks = channel.run_op(hosts, options.python, {"op": "markers", "prefix": prefix, "run": run_id},
                           options.survey_timeout_s)
    leaders: dict[str, str] = {}
    for host in hosts:
        seen = {str(h) for h in (looks[host].value or {}).get("seen", [])} | {host}
        leaders[host] = next(h for h in hosts if h in seen)
    return leaders


def _unpack(hosts: list[str], archive_path: str, manifest: Manifest, channel: NodeChannel, options: PushOptions,
            report: PushReport) -> None:
    spec = {"op": "unpack", "archive": archive_path, "prefix": manifest.prefix,
            "kind": manifest.kind, "unpacked_bytes": manifest.unpacked_bytes, "shebangs": manifest.shebangs,
            "marker": manifest.installed_marker(),
            # An archive read where it lies (a filesystem shared with this machine) is not the nodes' to delete.
            "remove_archive": options.remove_archive and archive_path == staging_path(manifest, options)}
    results = channel.run_op(hosts, options.python, spec, options.unpack_timeout_s)
    for host in hosts:
        outcome, result = report.nodes[host], results[host]
        value = result.value or {}
        if result.ok and value.get("ok"):
            outcome.status = INSTALLED
            outcome.actions += [f"unpacked to {manifest.prefix} in {value.get('seconds', 0):.1f}s",
                                *value.get("notes", [])]
        else:
            outcome.status = FAILED
            outcome.error = result.error or value.get("error")
            outcome.fix = result.fix or value.get("fix")


def verify_nodes(hosts: list[str], manifest: Manifest, channel: SshSettings | NodeChannel, options: PushOptions,
                 report: PushReport) -> None:
    """Run the env's own python on each host and compare with the head's manifest."""
    if isinstance(channel, SshSettings):
        channel = SshChannel(channel, options)
    python = f"{manifest.prefix}/bin/python"
    results = channel.run_op(hosts, python, {"op": "verify", "imports": sorted(manifest.imports)},
                             options.verify_timeout_s, isolated=False)
    for host in hosts:
        outcome, result = report.nodes[host], results[host]
        if not result.ok or result.value is None:
            outcome.status, outcome.error, outcome.fix = FAILED, f"{python} does not run on {host}: {result.error}", \
                result.fix
            continue
        problems = verification_problems(result.value, manifest)
        if problems:
            outcome.status, outcome.error = FAILED, f"{python} on {host}: " + "; ".join(problems)
            outcome.fix = f"{channel.push_command} (reinstalls {manifest.prefix} on {host})"
        else:
            imported = ", ".join(f"{k} {v}" for k, v in sorted(manifest.imports.items()))
            outcome.actions.append(f"verified: python {result.value['python']}, package set matches"
                                   + (f", {imported} import" if imported else ""))


def verification_problems(found: dict[str, Any], manifest: Manifest) -> list[str]:
    """What differs between a node's verify result and the head's manifest (empty: all good)."""
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
    for name, version in sorted(manifest.imports.items()):
        got = (found.get("imports") or {}).get(name) or {}
        if "error" in got:
            problems.append(f"import {name} fails: {got['error']}")
        elif got.get("version") != version:
            problems.append(f"{name} {got.get('version')} (head: {version})")
    return problems
