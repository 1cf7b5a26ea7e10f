"""The doctor's checks: judges that read facts and return problems, never gather anything.

A check is a function registered with :func:`node_check`, :func:`launch_check` or
:func:`cluster_check`. Its docstring's first line is the summary; the decorator declares id, severity,
tags, why it matters and the fix. It yields :class:`~clusterkit.core.findings.Problem` values (none means
pass) or raises :class:`~clusterkit.core.findings.NotApplicable`; it runs through the one runner,
:func:`clusterkit.core.findings.judge`, as config rules and log patterns do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from clusterkit.core.dsenv import effective_values, parse_deepspeed_env
from clusterkit.core.findings import CLUSTER_HOST, Catalogue, Finding, JudgeSpec, Problem, Severity, judge
from clusterkit.core.inventory import ActiveHost
from clusterkit.node.facts import ClusterProbes, Maybe, NodeFacts, Unavailable

CHECK_MODULES = ("collection", "gpu", "system", "software", "network", "launcher", "cluster", "slurm")


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
    #: Ranks are started by srun inside a Slurm allocation: no pdsh, no SSH between nodes.
    via_slurm: bool = False
    #: What DeepSpeed's runner on the launching machine exports to every rank here, over the node's own
    #: shell environment (see :func:`deepspeed_exports`); None where that is unknown or nothing is exported.
    launch_exports: Mapping[str, str] | None = None
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


def deepspeed_exports(facts: NodeFacts) -> dict[str, str]:
    """What DeepSpeed's runner on this machine exports to every rank: its ``NCCL_*`` environment, then
    ``~/.deepspeed_env``, then ``./.deepspeed_env`` (later wins); pdsh runs the exports after each
    node's shell startup files, so they override what those set."""
    values: dict[str, str] = {k: v for k, v in facts.env_vars.items() if k.startswith("NCCL_")}
    if not isinstance(facts.launcher, Unavailable):
        for file in facts.launcher.deepspeed_env_files:
            if file.exists and not isinstance(file.lines, Unavailable):
                entries, _ = parse_deepspeed_env(file.lines, file.path)
                values.update(effective_values(entries))
    return values


NodeCheckFn = Callable[[NodeFacts, NodeContext], Iterable[Problem]]
ClusterCheckFn = Callable[[ClusterView], Iterable[Problem]]


@dataclass(frozen=True)
class NodeCheck(JudgeSpec):
    """A check of one machine's facts."""

    #: "node" (every hostfile node) or "launch" (only the launching machine).
    scope: str
    func: NodeCheckFn
    #: A node check that also judges the launching machine (from its own view, even when it is not in the
    #: hostfile); on a hostfile node that is the launching machine it is judged once, from that view.
    on_launch_machine: bool = False


@dataclass(frozen=True)
class ClusterCheck(JudgeSpec):
    """A check of all nodes together."""

    func: ClusterCheckFn
    scope: str = "cluster"
    on_launch_machine: bool = False


CheckSpec = NodeCheck | ClusterCheck
CATALOGUE: Catalogue[CheckSpec] = Catalogue("check", "clusterkit.checks", CHECK_MODULES, "'clusterkit checks'")
#: id -> check, filled as check modules are imported (:func:`clusterkit.checks.load_checks`).
REGISTRY = CATALOGUE.by_id


def _summary(func: Callable[..., object], check_id: str) -> str:
    return (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else check_id


def node_check(check_id: str, severity: Severity, tags: Sequence[str], why: str, fix: str,
               on_launch_machine: bool = False) -> Callable[[NodeCheckFn], NodeCheckFn]:
    """Register a check that judges one node: ``func(facts: NodeFacts, ctx: NodeContext)``.

    ``on_launch_machine``: it also judges the launching machine, even outside the hostfile.
    """
    def decorate(func: NodeCheckFn) -> NodeCheckFn:
        CATALOGUE.add(NodeCheck(check_id, severity, tuple(tags), _summary(func, check_id), why, fix, "node", func,
                                on_launch_machine))
        return func
    return decorate


def launch_check(check_id: str, severity: Severity, tags: Sequence[str], why: str, fix: str
                 ) -> Callable[[NodeCheckFn], NodeCheckFn]:
    """Register a check of the launching machine only (where ``deepspeed`` and pdsh run):
    ``func(facts: NodeFacts, ctx: NodeContext)``."""
    def decorate(func: NodeCheckFn) -> NodeCheckFn:
        CATALOGUE.add(NodeCheck(check_id, severity, tuple(tags), _summary(func, check_id), why, fix, "launch", func))
        return func
    return decorate


def cluster_check(check_id: str, severity: Severity, tags: Sequence[str], why: str, fix: str
                  ) -> Callable[[ClusterCheckFn], ClusterCheckFn]:
    """Register a check that judges all nodes together: ``func(view: ClusterView)``."""
    def decorate(func: ClusterCheckFn) -> ClusterCheckFn:
        CATALOGUE.add(ClusterCheck(check_id, severity, tuple(tags), _summary(func, check_id), why, fix, func))
        return func
    return decorate


def select_checks(only: Sequence[str] = (), skip: Sequence[str] = (), scope: str | None = None
                  ) -> list[CheckSpec]:
    """Checks chosen by ``--only``/``--skip`` (ids or tags). Unknown names are a usage error."""
    return [spec for spec in CATALOGUE.select(only, skip) if scope is None or spec.scope == scope]


def checks_for_machine(specs: Iterable[CheckSpec], *, node: bool, launch: bool,
                       launch_judged_apart: bool = False) -> list[NodeCheck]:
    """The node and launch checks that judge one machine.

    ``node``: it is a hostfile node; ``launch``: jobs are launched from it, judged from its own view;
    ``launch_judged_apart``: it is the launching machine, judged from its own view in another run, so
    checks that also judge the launching machine are left out here (one file, one finding).
    """
    chosen = []
    for spec in specs:
        if not isinstance(spec, NodeCheck):
            continue
        if spec.scope == "launch":
            wanted = launch
        else:
            wanted = (node and not (launch_judged_apart and spec.on_launch_machine)) or \
                     (launch and spec.on_launch_machine)
        if wanted:
            chosen.append(spec)
    return chosen


def run_node_checks(specs: Iterable[CheckSpec], facts: NodeFacts, ctx: NodeContext) -> list[Finding]:
    """Run node and launching-machine checks on one machine's facts; never raises."""
    findings: list[Finding] = []
    for spec in specs:
        if isinstance(spec, NodeCheck):
            findings += judge(spec, ctx.host, lambda s=spec: s.func(facts, ctx))  # type: ignore[misc]
    return findings


def run_cluster_checks(specs: Iterable[CheckSpec], view: ClusterView) -> list[Finding]:
    """Run cluster-wide checks; never raises."""
    findings: list[Finding] = []
    for spec in specs:
        if isinstance(spec, ClusterCheck):
            findings += judge(spec, CLUSTER_HOST, lambda s=spec: s.func(view))  # type: ignore[misc]
    return findings
