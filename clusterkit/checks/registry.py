"""The check registry: judges that read facts and return problems, never gather anything.

A check is a function registered with :func:`node_check` or :func:`cluster_check`. Its docstring's
first line is the summary; the decorator declares id, severity, tags, why it matters and the fix.
It yields :class:`Problem` values (none means pass) or raises :class:`NotApplicable`. Any other
exception becomes an ``internal-error`` finding, so one broken check never stops a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from clusterkit.errors import UsageError
from clusterkit.facts import ClusterProbes, Maybe, NodeFacts, Unavailable
from clusterkit.inventory import ActiveHost

CLUSTER_HOST = "cluster"
INTERNAL_ERROR_ID = "internal-error"

T = TypeVar("T")


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 0, "warning": 1, "info": 2}[self.value]


class Outcome(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Problem:
    """What a check found wrong. ``fix`` overrides the check's generic fix when it can be exact."""

    message: str
    where: str = ""
    fix: str | None = None
    host: str | None = None
    #: Lowers the check's severity for this problem (never raises it).
    severity: Severity | None = None


class NotApplicable(Exception):
    """Raised by a check that does not apply here (no GPUs, no hostfile...)."""


def require(value: Maybe[T], what: str) -> T:
    """Return a read fact, or skip the check saying which fact was unavailable and why."""
    if isinstance(value, Unavailable):
        raise NotApplicable(f"{what} unavailable: {value.reason}")
    return value


@dataclass(frozen=True)
class Thresholds:
    """Limits the checks judge against; defaults follow NVIDIA's and DeepSpeed's guidance."""

    shm_min_bytes: int = 512 * 1024**2  # ds_report warns below 512 MB
    shm_per_gpu_bytes: int = 1024**3  # NCCL's SHM transport and dataloaders, per local rank
    nofile_min: int = 65536
    gpu_temp_warn_c: int = 85
    clock_skew_warn_s: float = 1.0
    disk_free_min_bytes: int = 10 * 1024**3


@dataclass(frozen=True)
class NodeContext:
    """What a node check may know beyond the node's facts."""

    host: str
    expected_gpus: int | None = None
    #: True where jobs are launched from (this machine): pdsh and the master port matter there.
    is_launch_node: bool = True
    #: False where no SSH reaches the node: a one-host launch on this machine, or a head outside the hostfile.
    needs_sshd: bool = True
    #: False for a one-host launch on this machine: DeepSpeed's runner then starts ranks without pdsh.
    multi_node: bool = True
    thresholds: Thresholds = field(default_factory=Thresholds)


@dataclass(frozen=True)
class ClusterView:
    """Everything cluster-wide checks judge: every node's facts (or why they are missing)."""

    hosts: Sequence[ActiveHost]
    nodes: Mapping[str, Maybe[NodeFacts]]
    probes: ClusterProbes | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    #: The hostfile's path, for findings that name its lines.
    hostfile: str = "hostfile"

    def reachable(self) -> dict[str, NodeFacts]:
        """Facts of the nodes that answered, in hostfile order."""
        return {h.name: f for h in self.hosts
                if not isinstance(f := self.nodes.get(h.name, Unavailable("missing")), Unavailable)}


NodeCheckFn = Callable[[NodeFacts, NodeContext], Iterable[Problem]]
ClusterCheckFn = Callable[[ClusterView], Iterable[Problem]]


@dataclass(frozen=True)
class CheckSpec:
    id: str
    severity: Severity
    tags: tuple[str, ...]
    summary: str
    why: str
    fix: str
    #: "node" (every hostfile node), "launch" (only the launching machine) or "cluster" (all together).
    scope: str
    func: Callable[..., Iterable[Problem]]
    #: A node check that also judges the launching machine (from its own view, even when it is not in the
    #: hostfile); on a hostfile node that is the launching machine it is judged once, from that view.
    on_launch_machine: bool = False


@dataclass(frozen=True)
class Finding:
    """One result line: a check's outcome on one host (``cluster`` for cluster-wide checks)."""

    check_id: str
    severity: Severity
    outcome: Outcome
    host: str
    where: str
    message: str
    why: str
    fix: str

    @property
    def is_error(self) -> bool:
        return self.outcome is Outcome.FAIL and self.severity is Severity.ERROR


REGISTRY: dict[str, CheckSpec] = {}


def _register(scope: str, check_id: str, severity: Severity, tags: Sequence[str], why: str,
              fix: str, on_launch_machine: bool = False
              ) -> Callable[[Callable[..., Iterable[Problem]]], Callable[..., Iterable[Problem]]]:
    def decorate(func: Callable[..., Iterable[Problem]]) -> Callable[..., Iterable[Problem]]:
        if check_id in REGISTRY:
            raise RuntimeError(f"check id {check_id!r} registered twice")
        summary = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else check_id
        REGISTRY[check_id] = CheckSpec(check_id, severity, tuple(tags), summary, why, fix, scope, func,
                                       on_launch_machine)
        return func

    return decorate


def node_check(check_id: str, severity: Severity, tags: Sequence[str], why: str, fix: str,
               on_launch_machine: bool = False
               ) -> Callable[[Callable[..., Iterable[Problem]]], Callable[..., Iterable[Problem]]]:
    """Register a check that judges one node: ``func(facts: NodeFacts, ctx: NodeContext)``.

    ``on_launch_machine``: it also judges the launching machine, even outside the hostfile.
    """
    return _register("node", check_id, severity, tags, why, fix, on_launch_machine)


def launch_check(check_id: str, severity: Severity, tags: Sequence[str], why: str, fix: str
                 ) -> Callable[[Callable[..., Iterable[Problem]]], Callable[..., Iterable[Problem]]]:
    """Register a check of the launching machine only (where ``deepspeed`` and pdsh run):
    ``func(facts: NodeFacts, ctx: NodeContext)``."""
    return _register("launch", check_id, severity, tags, why, fix)


def cluster_check(check_id: str, severity: Severity, tags: Sequence[str], why: str, fix: str
                  ) -> Callable[[Callable[..., Iterable[Problem]]], Callable[..., Iterable[Problem]]]:
    """Register a check that judges all nodes together: ``func(view: ClusterView)``."""
    return _register("cluster", check_id, severity, tags, why, fix)


def select_checks(only: Sequence[str] = (), skip: Sequence[str] = (), scope: str | None = None
                  ) -> list[CheckSpec]:
    """Checks chosen by ``--only``/``--skip`` (ids or tags). Unknown names are a usage error."""
    known_names = set(REGISTRY) | {tag for spec in REGISTRY.values() for tag in spec.tags}
    for name in [*only, *skip]:
        if name not in known_names:
            close = difflib.get_close_matches(name, sorted(known_names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"unknown check id or tag {name!r}{hint}; 'clusterkit checks' lists them")

    def matches(spec: CheckSpec, names: Sequence[str]) -> bool:
        return spec.id in names or any(tag in names for tag in spec.tags)

    return [spec for spec in REGISTRY.values()
            if (scope is None or spec.scope == scope)
            and (not only or matches(spec, only))
            and not matches(spec, skip)]


def checks_for_machine(specs: Iterable[CheckSpec], *, node: bool, launch: bool,
                       launch_judged_apart: bool = False) -> list[CheckSpec]:
    """The node and launch checks that judge one machine.

    ``node``: it is a hostfile node; ``launch``: jobs are launched from it, judged from its own view;
    ``launch_judged_apart``: it is the launching machine, judged from its own view in another run, so
    checks that also judge the launching machine are left out here (one file, one finding).
    """
    chosen = []
    for spec in specs:
        if spec.scope == "launch":
            wanted = launch
        elif spec.scope == "node":
            wanted = (node and not (launch_judged_apart and spec.on_launch_machine)) or \
                     (launch and spec.on_launch_machine)
        else:
            wanted = False
        if wanted:
            chosen.append(spec)
    return chosen


def _run_one(spec: CheckSpec, host: str, call: Callable[[], Iterable[Problem]]) -> list[Finding]:
    def finding(outcome: Outcome, message: str, where: str = "", fix: str | None = None,
                on_host: str | None = None) -> Finding:
        return Finding(spec.id, spec.severity, outcome, on_host or host, where, message, spec.why,
                       fix if fix is not None else spec.fix)

    problems: list[Problem] = []
    try:
        problems.extend(call())
    except NotApplicable as exc:
        if not problems:  # problems found before the check ran out of facts still stand
            return [finding(Outcome.SKIP, str(exc))]
    except Exception as exc:
        tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return [Finding(INTERNAL_ERROR_ID, Severity.ERROR, Outcome.FAIL, host, spec.id,
                        f"check {spec.id} crashed: {tail}",
                        "a crashed check cannot vouch for anything it covers",
                        "rerun with CLUSTERKIT_DEBUG=1 and report the traceback")]
    if not problems:
        return [finding(Outcome.PASS, spec.summary)]
    return [dataclasses.replace(finding(Outcome.FAIL, p.message, p.where, p.fix, p.host),
                                severity=lower(spec.severity, p.severity)) for p in problems]


def lower(severity: Severity, override: Severity | None) -> Severity:
    """``override`` where it is milder than ``severity``: a problem may soften its check, never harden it."""
    return override if override is not None and override.rank > severity.rank else severity


def run_node_checks(specs: Iterable[CheckSpec], facts: NodeFacts, ctx: NodeContext) -> list[Finding]:
    """Run node and launching-machine checks on one machine's facts; never raises."""
    findings: list[Finding] = []
    for spec in specs:
        if spec.scope in ("node", "launch"):
            findings += _run_one(spec, ctx.host, lambda s=spec: s.func(facts, ctx))  # type: ignore[misc]
    return findings


def run_cluster_checks(specs: Iterable[CheckSpec], view: ClusterView) -> list[Finding]:
    """Run cluster-wide checks; never raises."""
    findings: list[Finding] = []
    for spec in specs:
        if spec.scope == "cluster":
            findings += _run_one(spec, CLUSTER_HOST, lambda s=spec: s.func(view))  # type: ignore[misc]
    return findings
