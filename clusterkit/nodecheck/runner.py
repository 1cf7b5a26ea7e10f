"""One run of the node health check on this machine: collect, judge, drain or resume, log.

Everything is read in-process under the profile's deadlines (a hung NVML or filesystem costs one
section deadline and is itself a reason to drain); the node's state is read and changed with
``scontrol``, each call behind its own timeout. The run never raises: what went wrong is in the
result and the log line.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clusterkit import __version__
from clusterkit.checks import load_checks
from clusterkit.checks.registry import NodeContext, run_node_checks, select_checks
from clusterkit.cluster.remote.slurm import SlurmError, slurm_command
from clusterkit.core.findings import Finding, Outcome, Severity
from clusterkit.core.slurmstate import SlurmParseError, parse_nodes
from clusterkit.node.facts import NodeFacts, SlurmNodeFacts
from clusterkit.nodecheck.policy import Act, Decision, Fault, decide
from clusterkit.nodecheck.profile import Hook, Profile

#: Where each run appends its line on the node (``--log`` elsewhere).
DEFAULT_LOG = "/var/log/clusterkit/nodecheck.log"
#: The check name a section that did not finish in time drains under.
HUNG_CHECK = "hung"


@dataclass(frozen=True)
class RunOptions:
    """One run: which hook, on which node, acting or only saying what it would do."""

    profile: Profile
    node: str
    dry_run: bool = False
    log_path: str = DEFAULT_LOG
    #: Slurm's client commands' environment (None: this process's).
    environ: Mapping[str, str] | None = None


@dataclass
class RunResult:
    """What one run found and did."""

    node: str
    hook: Hook
    findings: list[Finding] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    #: Sections that did not finish within the profile's section deadline.
    hung: list[str] = field(default_factory=list)
    decision: Decision | None = None
    #: True when the decision was carried out (False in a dry run, or when it failed: see ``error``).
    acted: bool = False
    error: str = ""
    #: Why the log line could not be written ("" when it was).
    log_error: str = ""
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """As Slurm expects it of the hook (see :func:`hook_exit_code`)."""
        return hook_exit_code(self.hook, bool(self.faults))


def hook_exit_code(hook: Hook, faulty: bool) -> int:
    """0, except a prolog on a faulty node: its non-zero exit keeps the job off the node (Slurm requeues
    it). A health check's exit is 0 always (a newer slurmd will not register while its first run fails,
    so a node could never be drained); an epilog's too (the drain is done; ``Epilog error`` adds nothing)."""
    return 1 if hook is Hook.PROLOG and faulty else 0


def this_node(environ: Mapping[str, str] | None = None) -> str:
    """Slurm's name for this node: ``SLURMD_NODENAME`` (set by slurmd for every hook), else the short hostname."""
    env = os.environ if environ is None else environ
    return env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def faults_of(findings: Sequence[Finding], hung: Sequence[str], profile: Profile) -> list[Fault]:
    """Error findings, gravest check first (the profile's order), then hung sections."""
    rank = {check: i for i, check in enumerate(profile.checks)}
    errors = sorted((f for f in findings if f.outcome is Outcome.FAIL and f.severity is Severity.ERROR),
                    key=lambda f: rank.get(f.check_id, len(rank)))
    faults = [Fault(f.check_id, f.where) for f in errors]
    faults += [Fault(HUNG_CHECK, f"{name} >{profile.section_timeout_s:g}s") for name in hung]
    return faults


def collect(profile: Profile) -> tuple[NodeFacts, list[str]]:
    """This machine's facts for the profile's sections, and the sections that did not finish in time."""
    from clusterkit.node.collect.node import CollectOptions, collect_node

    facts = collect_node(CollectOptions(sections=list(profile.sections), section_timeout_s=profile.section_timeout_s,
                                        use_probe_cache=False, cwd="/"))
    hung = [name for name in profile.sections if name not in facts.timings_s]
    return facts, hung


def judge_node(facts: NodeFacts, profile: Profile, node: str) -> list[Finding]:
    """The profile's checks on this node's facts (as a node of a Slurm job, not a launching machine)."""
    load_checks()
    specs = select_checks(only=profile.checks, scope="node")
    ctx = NodeContext(host=node, is_launch_node=False, needs_sshd=False, multi_node=False, via_slurm=True)
    return run_node_checks(specs, facts, ctx)


def read_state(node: str, timeout_s: float, environ: Mapping[str, str] | None = None
               ) -> tuple[SlurmNodeFacts | None, str]:
    """``scontrol show node NODE``: its state and reason, or None and why not."""
    try:
        text = slurm_command(["scontrol", "show", "node", node, "--oneliner"], timeout_s, environ)
        found = [n for n in parse_nodes(text) if n.name == node]
    except (SlurmError, SlurmParseError) as exc:
        return None, str(exc)
    return (found[0], "") if found else (None, f"scontrol has no node named {node}")


def carry_out(decision: Decision, node: str, timeout_s: float, environ: Mapping[str, str] | None = None) -> str:
    """``scontrol update`` for a drain or resume; "" when done, else what failed."""
    if decision.act is Act.NOTHING:
        return ""
    argv = ["scontrol", "update", f"NodeName={node}"]
    argv += ["State=DRAIN", f"Reason={decision.reason}"] if decision.act is Act.DRAIN else ["State=RESUME"]
    try:
        slurm_command(argv, timeout_s, environ)
    except SlurmError as exc:
        return str(exc)
    return ""


def run_nodecheck(options: RunOptions, collect_facts: Callable[[Profile], tuple[NodeFacts, list[str]]] = collect
                  ) -> RunResult:
    """Collect, judge, decide and (unless dry) act, then log one line; never raises."""
    started, cpu_started = time.monotonic(), _cpu_s()
    profile = options.profile
    result = RunResult(node=options.node, hook=profile.hook)
    try:
        facts, result.hung = collect_facts(profile)
        result.findings = judge_node(facts, profile, options.node)
        result.faults = faults_of(result.findings, result.hung, profile)
        state, unknown = read_state(options.node, profile.scontrol_timeout_s, options.environ)
        result.decision = decide(state, result.faults, unknown)
        if not options.dry_run:
            result.error = carry_out(result.decision, options.node, profile.scontrol_timeout_s, options.environ)
            result.acted = result.decision.act is not Act.NOTHING and not result.error
    except Exception as exc:  # one broken part must not leave slurmd without an answer
        result.error = f"{type(exc).__name__}: {exc}"
    result.wall_s = round(time.monotonic() - started, 3)
    result.cpu_s = round(_cpu_s() - cpu_started, 3)
    result.log_error = write_log(options.log_path, log_line(result, options.dry_run))
    return result


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def log_line(result: RunResult, dry_run: bool = False) -> str:
    """One line for the node's log: when, which hook, what was found, what was done, how long it took."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    decision = result.decision
    if decision is None:
        done = "no decision"
    elif decision.act is Act.NOTHING:
        done = "nothing done"
    else:
        verb = f"would {decision.act.value}" if dry_run else (
            decision.act.past if result.acted else f"{decision.act.value} FAILED")
        done = verb + (f" ({decision.reason})" if decision.reason else "")
    found = "; ".join(f"{f.check}{' ' + f.where if f.where else ''}" for f in result.faults) or "no error"
    text = (f"{when} clusterkit {__version__} nodecheck {result.hook.value} {result.node}: {done}. found: {found}. "
            f"{decision.why if decision else ''}")
    if result.error:
        text += f" error: {result.error}."
    return f"{text.rstrip()} [{result.wall_s:.2f}s wall, {result.cpu_s:.2f}s cpu]"


def write_log(path: str, line: str) -> str:
    """Append ``line`` to the log at ``path`` (made if missing); "" when written, else why not."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(line.replace("\n", " ") + "\n")
    except OSError as exc:
        return f"cannot write the log {path}: {exc.strerror or exc}"
    return ""


class Watchdog:
    """Calls ``on_expiry`` once if not cancelled within ``budget_s`` (from a daemon thread)."""

    def __init__(self, budget_s: float, on_expiry: Callable[[], None]) -> None:
        self._timer = threading.Timer(budget_s, on_expiry)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
