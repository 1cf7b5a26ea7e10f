"""The config rule table: small judges of a DeepSpeed config against its cluster and launch arguments.

A rule is a function registered with :func:`rule`, which declares its id, severity, tags, why it
matters and its generic fix; the docstring's first line is the summary. It reads a
:class:`CheckInput` and yields :class:`Issue` values (none means pass) or raises
:class:`~clusterkit.checks.registry.NotApplicable` saying what it lacked. A rule that crashes becomes
an ``internal-error`` finding; the other rules still run. Results are the same
:class:`~clusterkit.checks.registry.Finding` values the doctor reports, so the renderers are shared.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterkit.checks.registry import INTERNAL_ERROR_ID, Finding, NotApplicable, Outcome, Severity
from clusterkit.dsconfig.hf_auto import AUTO, HfSimulation, TrainerArgs
from clusterkit.dsconfig.introspect import DeepSpeedVerdict
from clusterkit.dsconfig.load import DsConfig, KeyPath
from clusterkit.dsconfig.resources import ClusterResources
from clusterkit.dsconfig.topology import Parallelism, Topology
from clusterkit.facts import Maybe, Unavailable

CONFIG_HOST = "config"


class Runner(enum.StrEnum):
    """What hands the config to DeepSpeed; it decides who replaces ``"auto"``."""

    HF_TRAINER = "hf-trainer"
    ACCELERATE = "accelerate"
    DEEPSPEED = "deepspeed"
    UNKNOWN = "unknown"


class SharedFs(enum.StrEnum):
    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CheckInput:
    """Everything the rules judge. ``effective`` is the config as DeepSpeed will receive it."""

    config: DsConfig
    effective: dict[str, Any]
    runner: Runner = Runner.UNKNOWN
    topology: Topology | None = None
    parallel: Parallelism = field(default_factory=Parallelism)
    trainer: TrainerArgs | None = None
    hf: HfSimulation | None = None
    resources: Maybe[ClusterResources] = field(default_factory=lambda: Unavailable("not collected"))
    shared_fs: SharedFs = SharedFs.UNKNOWN
    deepspeed: Maybe[DeepSpeedVerdict] = field(default_factory=lambda: Unavailable("not run"))

    def value(self, *keys: str, default: Any = None) -> Any:
        """A value of the effective config at a key path."""
        node: Any = self.effective
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    def section(self, *keys: str) -> dict[str, Any]:
        """A dict section of the effective config ({} when missing or not a dict)."""
        value = self.value(*keys)
        return value if isinstance(value, dict) else {}

    def zero_stage(self) -> int:
        stage = self.value("zero_optimization", "stage", default=0)
        return stage if isinstance(stage, int) and not isinstance(stage, bool) else 0

    def offload_device(self, kind: str) -> str:
        """``none``, ``cpu`` or ``nvme`` for ``offload_param``/``offload_optimizer`` (deprecated keys too)."""
        device = self.value("zero_optimization", kind, "device")
        if isinstance(device, str) and device != AUTO:
            return device
        legacy = {"offload_optimizer": "cpu_offload", "offload_param": "cpu_offload_param"}[kind]
        return "cpu" if self.value("zero_optimization", legacy) is True else "none"

    def enabled(self, section: str) -> bool | None:
        """``<section>.enabled`` as a bool; None when it is absent or still ``"auto"``."""
        value = self.value(section, "enabled")
        if section == "bf16" and "bf16" not in self.effective:
            value = self.value("bfloat16", "enabled")
        return value if isinstance(value, bool) else None


@dataclass(frozen=True)
class Issue:
    """What a rule found. ``severity`` may lower the rule's own; ``host`` for a per-node problem."""

    message: str
    path: KeyPath = ()
    fix: str | None = None
    severity: Severity | None = None
    host: str | None = None


RuleFn = Callable[[CheckInput], Iterable[Issue]]


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    tags: tuple[str, ...]
    summary: str
    why: str
    fix: str
    func: RuleFn


RULES: dict[str, Rule] = {}


def rule(rule_id: str, severity: Severity, tags: Sequence[str], why: str, fix: str
         ) -> Callable[[RuleFn], RuleFn]:
    """Register a config rule."""
    def decorate(func: RuleFn) -> RuleFn:
        if rule_id in RULES:
            raise RuntimeError(f"config rule id {rule_id!r} registered twice")
        summary = (func.__doc__ or rule_id).strip().splitlines()[0]
        RULES[rule_id] = Rule(rule_id, severity, tuple(tags), summary, why, fix, func)
        return func

    return decorate


def load_rules() -> dict[str, Rule]:
    """Import every rule module (they register themselves) and return the table."""
    import importlib

    for name in ("rules_keys", "rules_batch", "rules_precision", "rules_zero", "rules_optim"):
        importlib.import_module(f"clusterkit.dsconfig.{name}")
    return RULES


def run_rules(check: CheckInput, rules: Iterable[Rule] | None = None) -> list[Finding]:
    """Run rules in table order; never raises."""
    findings: list[Finding] = []
    for spec in (rules if rules is not None else load_rules().values()):
        findings += _run_one(spec, check)
    return findings


def _run_one(spec: Rule, check: CheckInput) -> list[Finding]:
    try:
        issues = list(spec.func(check))
    except NotApplicable as exc:
        return [Finding(spec.id, spec.severity, Outcome.SKIP, CONFIG_HOST, check.config.path, str(exc),
                        spec.why, spec.fix)]
    except Exception as exc:
        tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return [Finding(INTERNAL_ERROR_ID, Severity.ERROR, Outcome.FAIL, CONFIG_HOST, spec.id,
                        f"config rule {spec.id} crashed: {tail}",
                        "a crashed rule cannot vouch for anything it covers",
                        "rerun with CLUSTERKIT_DEBUG=1 and report the traceback")]
    if not issues:
        return [Finding(spec.id, spec.severity, Outcome.PASS, CONFIG_HOST, check.config.path, spec.summary,
                        spec.why, spec.fix)]
    findings = []
    for issue in issues:
        severity = spec.severity
        if issue.severity is not None and issue.severity.rank > spec.severity.rank:
            severity = issue.severity
        findings.append(Finding(spec.id, severity, Outcome.FAIL, issue.host or CONFIG_HOST,
                                check.config.where(issue.path), issue.message, spec.why,
                                issue.fix if issue.fix is not None else spec.fix))
    return findings


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == AUTO


def whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
