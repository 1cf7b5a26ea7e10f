"""Put a packed env on every node at the same absolute path, and prove it runs there.

1. survey every node in parallel: what is at the prefix and whether it is this env (its marker, its own
   interpreter's package set and Python, its files against what was unpacked), room and a writable
   directory for the archive and for the env, tar and zstd, a venv's base interpreter; and which
   nodes (and whether the head) see the same directory beside the prefix and the same staging
   directory, by tokens each writes there (``clusterkit.envpack.judge``);
2. put the archive on one node of each group sharing a staging directory, among those that need it
   (``Nodes.put``: over SSH a pipelined relay, checksummed on every node, resumed, routed around dead
   nodes; through Slurm sbcast, or nothing sent where every node reads the head's archive in place);
3. unpack on one node of each group sharing the prefix's directory, in parallel (temporary directory,
   conda-unpack with the env's python, rename); only what clusterkit installed (or an empty
   directory) is replaced, anything else only with ``replace_existing``, and then moved aside;
4. verify with the env's own interpreter: it starts, its package set matches the head's, and torch and
   deepspeed import where they do on the head.

The nodes are a :class:`~clusterkit.cluster.Nodes` (SSH, Slurm or this machine): each stage is one
``nodes.run`` of node_env's operation (the same command on every node, which fills in its own name),
the archive one ``nodes.put``. Nothing here asks which transport carries them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clusterkit.cluster import BroadcastOptions, GroupResult, Nodes
from clusterkit.cluster.remote import HostResult, RemoteError
from clusterkit.cluster.remote.transfer import Delivery, HopEvent, RemoteFile
from clusterkit.envpack.judge import (
    HEAD,
    cannot_install,
    copy_problems,
    foreign_refusal,
    head_holds_source,
    node_holds_source,
    share_groups,
    verification_problems,
)
from clusterkit.envpack.pack import Manifest, node_env_command, parse_node_env_output
from clusterkit.errors import UsageError
from clusterkit.node import env_unpack as node_env
from clusterkit.node.relay_hop import human as human_bytes

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
    #: Replace what is at the prefix though clusterkit did not install it (moved aside, never deleted).
    replace_existing: bool = False
    #: The command that pushes again the way this push was asked for (in fixes; ARCHIVE is filled in).
    push_command: str = "clusterkit env push HOSTFILE ARCHIVE"


class PushProgress(Protocol):
    """What a push tells a progress view: each stage as it starts, and the archive's bytes per node."""

    def phase(self, text: str) -> None:
        """A stage starts (``survey: ...``, ``broadcast ...``, ``unpack ...``, ``verify ...``)."""

    def hop(self, event: HopEvent) -> None:
        """Bytes reached a node, or its copy finished or failed."""

    def round(self, number: int, chain: list[str], offset: int) -> None:
        """A relay round starts along ``chain`` from byte ``offset``."""


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


def run_op(nodes: Nodes, hosts: Sequence[str], python: str, spec: dict[str, Any], timeout_s: float,
           isolated: bool = True) -> GroupResult[dict[str, Any]]:
    """node_env ``spec`` run with ``python`` on each of ``hosts`` (one command for all: each node fills in
    its own name); its answer per host, or why there is none."""
    if not hosts:
        return GroupResult()
    op = str(spec["op"])
    done = nodes.run(node_env_command(python, spec, isolated_site=isolated), timeout_s, hosts=list(hosts))
    return done.then(lambda host, out: node_env_result(host, python, out.exit_code, out.stdout, out.stderr, op))


def push_env(archive: Path, manifest: Manifest, nodes: Nodes, options: PushOptions,
             progress: PushProgress | None = None, *, hosts: Sequence[str] | None = None) -> PushReport:
    """Make ``manifest``'s env present and verified on every host of ``nodes`` (or ``hosts`` among them);
    per-host outcomes, never an exception (but a UsageError, before anything is done, when the head's
    archive is not its manifest's size)."""
    chosen = list(hosts) if hosts is not None else nodes.names
    say = progress.phase if progress is not None else (lambda _text: None)
    check_archive_size(archive, manifest)
    report = PushReport({h: NodeResult(h, FAILED) for h in chosen})
    prefix = manifest.prefix
    survey = Survey.run(chosen, manifest, nodes, options, say)
    for host in chosen:
        if host not in survey.reachable:
            report.nodes[host] = NodeResult(host, FAILED, error=survey.results[host].error,
                                            fix=survey.results[host].fix)
    need: list[str] = []
    for host in survey.reachable:
        if _judge(host, survey, manifest, options.push_command.replace("ARCHIVE", str(archive)), options,
                  report.nodes[host]):
            need.append(host)
    if need:
        _install(need, archive, manifest, survey, nodes, options, report, progress)
    to_verify = [h for h in survey.reachable if report.nodes[h].status in (INSTALLED, SHARED)
                 or (options.verify_only and report.nodes[h].status == UP_TO_DATE)]
    for host in list(to_verify):
        leader = survey.leader(host)
        if leader != host and report.nodes[leader].status == FAILED:
            report.nodes[host].status = FAILED
            report.nodes[host].error = f"{leader}, which installs the shared {prefix}, failed"
            to_verify.remove(host)
    if to_verify and not options.dry_run:
        say(f"verify on {len(to_verify)} node(s): {prefix}/bin/python starts, package set, "
            f"{', '.join(manifest.imports) or 'no torch/deepspeed'} import")
        verify_nodes(to_verify, manifest, nodes, options, report)
    return report


def check_archive_size(archive: Path, manifest: Manifest) -> None:
    """The head's archive has its manifest's size: a truncated one is named here, never blamed on the network."""
    try:
        size = archive.stat().st_size
    except OSError as exc:
        raise UsageError(f"{archive}: {exc.strerror}") from None
    if size != manifest.size:
        raise UsageError(f"{archive} is {human_bytes(size)} ({size} bytes), its manifest says "
                         f"{human_bytes(manifest.size)} ({manifest.size} bytes): cut short or changed since it "
                         "was packed (a copy still being written?); pack the env again, or copy the archive whole")


@dataclass
class Survey:
    """Every node's survey, and what it says about directories shared between nodes (and with the head)."""

    results: dict[str, HostResult[dict[str, Any]]]
    reachable: list[str]
    prefix_groups: dict[str, frozenset[str]]
    staging_groups: dict[str, frozenset[str]]
    head_source: bool
    manifest: Manifest

    @classmethod
    def run(cls, hosts: Sequence[str], manifest: Manifest, nodes: Nodes, options: PushOptions,
            say: Callable[[str], None]) -> Survey:
        run_id = uuid.uuid4().hex[:12]
        staging = staging_path(manifest, options).rsplit("/", 1)[0]
        base = {"prefix": manifest.prefix, "run": run_id, "staging": staging}
        say(f"survey: is {manifest.prefix} there and is it this env, room for "
            f"{human_bytes(manifest.size + manifest.unpacked_bytes)}, tools")
        with _head_tokens(base):
            results = run_op(nodes, hosts, options.python, {
                **base, "op": "survey", "base_python": manifest.base_python, "archive_name": manifest.archive,
                "check_env": True, "check_timeout_s": options.survey_timeout_s / 2}, options.survey_timeout_s)
            reachable = [h for h in hosts if results[h].ok and results[h].value is not None]
            # After every survey: then no token is gone before every node has listed them.
            later = run_op(nodes, reachable, options.python, {**base, "op": "forget"}, options.survey_timeout_s)
        groups = []
        for kind in ("prefix", "staging"):
            sightings = {h: [*((results[h].value or {}).get("seen") or {}).get(kind, []),
                             *((later[h].value or {}).get("seen") or {}).get(kind, [])] for h in reachable}
            groups.append(share_groups(reachable, sightings))
        return cls(results, reachable, groups[0], groups[1], head_holds_source(manifest), manifest)

    def info(self, host: str) -> dict[str, Any]:
        return self.results[host].value or {}

    def is_source(self, host: str) -> bool:
        """Whether the host's prefix is the very directory the archive was packed from."""
        group = self.prefix_groups.get(host, frozenset({host}))
        return (HEAD in group and self.head_source) or any(
            node_holds_source(self.info(member), self.manifest) for member in group if member != HEAD)

    def leader(self, host: str) -> str:
        """The host that installs the env for every host seeing its prefix's directory (hostfile order)."""
        group = self.prefix_groups.get(host, frozenset({host}))
        return next(h for h in self.reachable if h in group)


def _judge(host: str, survey: Survey, manifest: Manifest, push_command: str, options: PushOptions,
           result: NodeResult) -> bool:
    """The host's outcome as far as the survey decides it; True when the env must be installed there.

    ``push_command``: the command that pushes this archive again (in fixes)."""
    prefix, info = manifest.prefix, survey.info(host)
    if survey.is_source(host):
        result.status = UP_TO_DATE
        seen = "" if node_holds_source(info, manifest) else " (the same directory: this node sees the " + \
            ("head's" if HEAD in survey.prefix_groups[host] else "packing node's") + f" {Path(prefix).parent})"
        result.actions.append(f"{prefix} is the env the archive was packed from{seen}")
        return False
    leader = survey.leader(host)
    if leader != host:
        result.status = SHARED
        result.actions.append(f"{Path(prefix).parent} is shared with {leader}: installed once, through it")
        return False
    state = (info.get("at_prefix") or {}).get("state", node_env.ABSENT)
    problems = copy_problems(info, manifest) if state in (node_env.CLUSTERKIT, node_env.FOREIGN) else []
    if state in (node_env.CLUSTERKIT, node_env.FOREIGN) and not problems:
        result.status = UP_TO_DATE
        result.actions.append(f"{prefix} holds this env: " + ("its files, package set and Python checked"
                              if state == node_env.CLUSTERKIT else "its package set and Python match the archive's "
                              "(not installed by clusterkit: left as it is)"))
        return False
    refused = state == node_env.FOREIGN and not options.replace_existing
    if options.verify_only:
        result.error = (f"{prefix} on {host} is missing" if state in (node_env.ABSENT, node_env.EMPTY)
                        else f"{prefix} on {host} is not this env: {'; '.join(problems)}")
        result.fix = push_command + (
            " --replace-existing (it was not installed by clusterkit: then moved aside, never deleted)" if refused
            else f" (installs it on {host})" if state in (node_env.ABSENT, node_env.EMPTY)
            else f" (reinstalls it on {host})")
        return False
    if refused:
        result.error, result.fix = foreign_refusal(host, info, prefix, push_command)
        if problems:
            result.error += f" ({'; '.join(problems)})"
        return False
    problem = cannot_install(host, info, manifest)
    if problem:
        result.error, result.fix = problem
        return False
    why = {node_env.CLUSTERKIT: f"reinstall: {'; '.join(problems)}",
           node_env.FOREIGN: f"move what is at {prefix} aside ({'; '.join(problems)})"}.get(state)
    if options.dry_run:
        result.status = WOULD_INSTALL
        result.actions.append(f"would {why + ', then ' if why else ''}send {human_bytes(manifest.size)} and "
                              f"unpack to {prefix}")
        return False
    if why:
        result.actions.append(why)
    return True


@contextmanager
def _head_tokens(spec: dict[str, Any]) -> Iterator[None]:
    """This run's tokens on the head, for the nodes to find while they survey (where the head may write)."""
    written = [d for d in set(node_env.token_dirs(spec).values()) if node_env.write_token(d, spec["run"], HEAD)]
    try:
        yield
    finally:
        for directory in written:
            with suppress(OSError):
                (directory / f"{node_env.TOKEN_PREFIX}{spec['run']}-{HEAD}").unlink()


def _install(need: list[str], archive: Path, manifest: Manifest, survey: Survey, nodes: Nodes,
             options: PushOptions, report: PushReport, progress: PushProgress | None) -> None:
    """The archive onto one host of each group sharing a staging directory, then unpacked on every host in ``need``."""
    say = progress.phase if progress is not None else (lambda _text: None)
    remote = RemoteFile(staging_path(manifest, options), manifest.size, manifest.sha256)
    receiver = {host: next(h for h in need if h in survey.staging_groups[host]) for host in need}
    receivers = [h for h in need if receiver[h] == h]
    how = BroadcastOptions(stall_s=options.stall_s, max_rounds=options.max_rounds, python=options.python,
                           listener=progress.hop if progress is not None else None,
                           round_listener=progress.round if progress is not None else None,
                           in_place=True, phase=say)
    put = nodes.put(archive, remote, options.unpack_timeout_s, hosts=receivers, options=how)
    report.deliveries = {h: delivery_of(h, put.get(h)) for h in receivers}
    landed = []
    for host in need:
        delivery, result = report.deliveries[receiver[host]], report.nodes[host]
        if receiver[host] != host:
            result.actions.append(f"{remote.path.rsplit('/', 1)[0]} is shared with {receiver[host]}: the archive "
                                  "was sent there once")
        else:
            result.actions += delivery.notes
        if delivery.ok:
            landed.append(host)
            if receiver[host] == host and delivery.path is None:
                resumed = "resumed, " if delivery.resumed_from else ""
                result.actions.append(f"archive there ({resumed}{human_bytes(delivery.sent_bytes)} sent, "
                                      f"round {delivery.rounds or 1})")
        else:
            result.error, result.fix = delivery.error, delivery.fix
    if not landed:
        return
    say(f"unpack to {manifest.prefix} on {len(landed)} node(s)")
    # Where every node reads the head's archive in place, that path; else the staging copy.
    sources = {h: report.deliveries[receiver[h]].path or remote.path for h in landed}
    for source in dict.fromkeys(sources.values()):
        _unpack([h for h in landed if sources[h] == source], source, manifest, nodes, options, report)
    # An archive read where it lies (a filesystem shared with this machine) is not the nodes' to delete.
    if options.remove_archive and remote.path != str(archive.resolve()):
        done = [h for h in receivers if report.deliveries[h].path is None
                and all(report.nodes[m].status == INSTALLED for m in need if receiver[m] == h)]
        run_op(nodes, done, options.python, {"op": "discard", "archive": remote.path}, options.survey_timeout_s)


def delivery_of(host: str, result: HostResult[Delivery] | None) -> Delivery:
    """A host's delivery whatever the put said: its own, or a failed one carrying the put's reason."""
    if result is None:
        return Delivery(host, ok=False, error=f"no copy was attempted on {host}")
    if result.value is None:
        return Delivery(host, ok=False, error=result.error or f"no copy on {host}", fix=result.fix)
    if not result.ok and result.value.ok:  # the transport's error stands over a value that says otherwise
        result.value.ok, result.value.error, result.value.fix = False, result.error, result.fix
    return result.value


def _unpack(hosts: list[str], archive_path: str, manifest: Manifest, nodes: Nodes, options: PushOptions,
            report: PushReport) -> None:
    spec = {"op": "unpack", "archive": archive_path, "prefix": manifest.prefix,
            "kind": manifest.kind, "unpacked_bytes": manifest.unpacked_bytes, "shebangs": manifest.shebangs,
            "marker": manifest.installed_marker(), "replace_existing": options.replace_existing}
    results = run_op(nodes, hosts, options.python, spec, options.unpack_timeout_s)
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
            if value.get("refused"):  # something else appeared at the prefix since the survey
                outcome.fix = foreign_refusal(host, {}, manifest.prefix, options.push_command)[1]


def verify_nodes(hosts: list[str], manifest: Manifest, nodes: Nodes, options: PushOptions,
                 report: PushReport) -> None:
    """Run the env's own python on each host and compare with the head's manifest."""
    python = f"{manifest.prefix}/bin/python"
    results = run_op(nodes, hosts, python, {"op": "verify", "imports": sorted(manifest.imports)},
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
            if verification_problems(result.value, manifest, imports=False):  # what a push sees, and redoes
                outcome.fix = f"{options.push_command} (reinstalls {manifest.prefix} on {host})"
            else:  # a push would find this env whole and change nothing: the cause is elsewhere
                outcome.fix = (f"the env's files, package set and Python on {host} match the archive, so a push "
                               "would not change this: look outside the env on "
                               f"{host} (system libraries, drivers, what its .pth files point to)")
        else:
            imported = ", ".join(f"{k} {v}" for k, v in sorted(manifest.imports.items()))
            outcome.actions.append(f"verified: python {result.value['python']}, package set matches"
                                   + (f", {imported} import" if imported else ""))
