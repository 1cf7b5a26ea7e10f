"""``config check`` without the CLI: gather the inputs, run the rules, return a report (pure of I/O
beyond what the caller hands in, so tests drive it directly)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clusterkit.core.findings import Finding
from clusterkit.dsconfig.hf_auto import HfSimulation, TrainerArgs, parse_trainer_args, simulate_hf_trainer
from clusterkit.dsconfig.introspect import judge_with_deepspeed
from clusterkit.dsconfig.load import DsConfig
from clusterkit.dsconfig.resources import ClusterResources
from clusterkit.dsconfig.rules import CONFIG_HOST, CheckInput, Runner, SharedFs, run_rules
from clusterkit.dsconfig.summary import ConfigSummary, summarize
from clusterkit.dsconfig.topology import Parallelism, Topology
from clusterkit.node.facts import Maybe, Unavailable


@dataclass
class ConfigCheckReport:
    """The outcome of checking one config: its inputs as understood, the findings, a summary."""

    config: DsConfig
    runner: Runner
    topology: Topology | None
    parallel: Parallelism
    resources_source: str
    deepspeed_version: str
    effective: dict[str, Any]
    summary: ConfigSummary
    findings: list[Finding]

    duration_s: float = 0.0

    @property
    def has_errors(self) -> bool:
        return any(f.is_error for f in self.findings)

    @property
    def hosts(self) -> list[str]:
        return []  # the findings are about one document (and the nodes a rule names)

    def header(self) -> list[str]:
        """What was checked: the config, DeepSpeed's version, the runner, the world, the batch."""
        where = self.topology.describe() if self.topology else "world size unknown (no --hostfile/--world-size)"
        return [f"{self.config.path}: DeepSpeed {self.deepspeed_version}, runner {self.runner.value}, {where}",
                *(f"  {line}" for line in self.summary.lines())]

    def missing(self) -> dict[str, str]:
        return {}

    def names_host(self, finding: Finding) -> bool:
        return finding.host != CONFIG_HOST


def choose_runner(explicit: Runner | None, trainer_argv: Sequence[str]) -> Runner:
    """The runner the user named; the HF Trainer when trainer arguments follow '--'; else unknown."""
    if explicit is not None:
        return explicit
    return Runner.HF_TRAINER if trainer_argv else Runner.UNKNOWN


def check_config(config: DsConfig, *, topology: Topology | None = None,
                 parallel: Parallelism | None = None, trainer_argv: Sequence[str] = (),
                 runner: Runner | None = None,
                 resources: Maybe[ClusterResources] | None = None,
                 shared_fs: SharedFs = SharedFs.UNKNOWN, hidden_size: int | None = None) -> ConfigCheckReport:
    """Judge ``config`` for a launch on ``topology`` with ``trainer_argv`` (the args after ``--``)."""
    chosen = choose_runner(runner, trainer_argv)
    trainer: TrainerArgs | None = None
    hf: HfSimulation | None = None
    effective = config.data
    if chosen is Runner.HF_TRAINER:
        trainer = parse_trainer_args(trainer_argv)
        hf = simulate_hf_trainer(config.data, trainer, topology.world_size if topology else None, hidden_size)
        effective = hf.config
    verdict = judge_with_deepspeed(effective)
    res: Maybe[ClusterResources] = resources if resources is not None else Unavailable("not collected")
    check = CheckInput(config=config, effective=effective, runner=chosen, topology=topology,
                       parallel=parallel or Parallelism(), trainer=trainer, hf=hf, resources=res,
                       shared_fs=shared_fs, deepspeed=verdict)
    findings = run_rules(check)
    return ConfigCheckReport(
        config=config, runner=chosen, topology=topology, parallel=check.parallel,
        resources_source=res.source if isinstance(res, ClusterResources) else f"unavailable ({res.reason})",
        deepspeed_version=verdict.version if not isinstance(verdict, Unavailable) else verdict.reason,
        effective=effective, summary=summarize(effective, topology, check.parallel), findings=findings)
