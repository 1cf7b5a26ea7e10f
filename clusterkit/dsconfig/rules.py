"""The config rule table: small judges of a DeepSpeed config against its cluster and launch arguments.

A rule is a function registered with :func:`rule`, which declares its id, severity, tags, why it
matters and its generic fix; the docstring's first line is the summary. It reads a
:class:`CheckInput` and yields :class:`~clusterkit.core.findings.Problem` values (a key ``path`` names the
place in the config) or raises :class:`~clusterkit.core.findings.NotApplicable` saying what it lacked. Rules
run through the same runner as the doctor's checks, with the same semantics, and give the same
:class:`~clusterkit.core.findings.Finding` values, so the renderers are shared.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterkit.core.findings import Catalogue, Finding, JudgeSpec, Problem, Severity, judge
from clusterkit.dsconfig.hf_auto import AUTO, HfSimulation, TrainerArgs
from clusterkit.dsconfig.introspect import DeepSpeedVerdict
from clusterkit.dsconfig.load import DsConfig
from clusterkit.dsconfig.resources import ClusterResources
from clusterkit.dsconfig.topology import Parallelism, Topology
from clusterkit.node.facts import Maybe, Unavailable

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


RuleFn = Callable[[CheckInput], Iterable[Problem]]
RULE_MODULES = ("rules_keys", "rules_batch", "rules_precision", "rules_zero", "rules_optim")


@dataclass(frozen=True)
class Rule(JudgeSpec):
    """A config rule: its declaration and the function that judges a :class:`CheckInput`."""

    func: RuleFn


CATALOGUE: Catalogue[Rule] = Catalogue("config rule", "clusterkit.dsconfig", RULE_MODULES,
                                       "'clusterkit config check --show-passed'")
#: id -> rule, filled as rule modules are imported (:func:`load_rules`).
RULES = CATALOGUE.by_id


def rule(rule_id: str, severity: Severity, tags: Sequence[str], why: str, fix: str
         ) -> Callable[[RuleFn], RuleFn]:
    """Register a config rule."""
    def decorate(func: RuleFn) -> RuleFn:
        summary = (func.__doc__ or rule_id).strip().splitlines()[0]
        CATALOGUE.add(Rule(rule_id, severity, tuple(tags), summary, why, fix, func))
        return func

    return decorate


def load_rules() -> dict[str, Rule]:
    """Import every rule module (they register themselves) and return the table."""
    return CATALOGUE.load()


def run_rules(check: CheckInput, rules: Iterable[Rule] | None = None) -> list[Finding]:
    """Run rules in table order through the one runner (:func:`clusterkit.core.findings.judge`); never raises.

    A problem's key path becomes its ``file:line`` in the config.
    """
    findings: list[Finding] = []
    for spec in (rules if rules is not None else load_rules().values()):
        findings += judge(spec, CONFIG_HOST, lambda s=spec: s.func(check),  # type: ignore[misc]
                          default_where=check.config.path, place=check.config.where)
    return findings


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == AUTO


def whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
