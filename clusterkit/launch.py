"""Launching a job as a library: the preflight (the doctor's survey and checks, plus config check of
the config the script reads) over any :class:`~clusterkit.cluster.Nodes`, and the run step, which hands
the process to the launch line (DeepSpeed's runner, or srun).

The line itself comes from the nodes (:meth:`~clusterkit.cluster.Nodes.launch_line`). Nothing here
prints: the survey's progress goes to a listener, the report back to the command.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from clusterkit.checks import load_checks
from clusterkit.checks.registry import CheckSpec, select_checks
from clusterkit.core.findings import Finding
from clusterkit.core.findings_report import DoctorReport
from clusterkit.core.inventory import ActiveHost
from clusterkit.core.slurmlaunch import with_job_cpus
from clusterkit.doctor import judge_cluster
from clusterkit.dsconfig.check import check_config
from clusterkit.dsconfig.load import load_ds_config
from clusterkit.dsconfig.resources import resources_from_facts
from clusterkit.dsconfig.rules import Runner, load_rules
from clusterkit.dsconfig.topology import topology_from_hosts
from clusterkit.node.facts import ClusterProbes, Maybe, NodeFacts, SlurmLaunchIntent, Unavailable
from clusterkit.survey import AUTO_PORT, SurveyOptions, survey_nodes

if TYPE_CHECKING:
    from clusterkit.cluster import Nodes, ProgressListener

#: Judged by the line instead: it names --master_addr, so DeepSpeed's own guess of it does not apply.
NOT_FOR_A_LAUNCH = ("master-address-suspicious",)


@dataclass(frozen=True)
class ConfigToCheck:
    """The DeepSpeed config the script will read, and how it gets it."""

    path: str
    script_args: list[str]
    #: Passed as the HF Trainer's ``--deepspeed FILE``: "auto" values come from the script's arguments.
    hf_trainer: bool


@dataclass(frozen=True)
class PreflightRequest:
    """What the preflight looks at and how (the nodes are given apart, opened by the command)."""

    python: str
    timeout_s: float = 30.0
    master_addr: str | None = None
    #: None: DeepSpeed's 29500 if free on the first host, else a free one.
    master_port: int | None = None
    #: Doctor check ids/tags and config rule ids to leave out.
    skip: Sequence[str] = ()
    config: ConfigToCheck | None = None
    #: The training script as the launch line names it (relative to this directory); None for a module.
    script: str | None = None
    #: What the launch will ask of a scheduler, weighed against the job where the survey read one (Slurm).
    intent: SlurmLaunchIntent | None = None


@dataclass(frozen=True)
class Preflight:
    """The preflight's report, and the rendezvous it tested (to launch with)."""

    report: DoctorReport
    master_addr: str | None
    master_port: int | None


def preflight_checks(skip: Sequence[str]) -> list[CheckSpec]:
    """The doctor's checks a launch runs, less ``skip`` (config rule ids there are the config check's);
    an unknown id or tag is a usage error, raised before any node is asked."""
    load_checks()
    rules = load_rules()
    return select_checks(skip=[name for name in skip if name not in rules] + list(NOT_FOR_A_LAUNCH))


def preflight(nodes: Nodes, request: PreflightRequest, progress: ProgressListener | None = None) -> Preflight:
    """Survey and judge ``nodes``, check the config; each node's progress goes to ``progress``."""
    specs = preflight_checks(request.skip)
    options = SurveyOptions(python=request.python, timeout_s=request.timeout_s, master_addr=request.master_addr,
                            master_port=AUTO_PORT if request.master_port is None else request.master_port,
                            script=request.script)
    started = time.time()
    hosts = nodes.hosts
    facts, probes = survey_nodes(nodes, options, progress)
    weigh_intent(probes, request.intent, hosts)
    report = judge_cluster(specs, hosts, facts, probes, started, nodes.hostfile)
    if request.config is not None:
        report.findings += [f for f in config_findings(request.config, hosts, facts, nodes.hostfile)
                            if f.check_id not in request.skip]
    report.duration_s = time.time() - started
    master = probes.master
    if isinstance(master, Unavailable):
        return Preflight(report, request.master_addr, request.master_port)
    address = master.address if not isinstance(master.address, Unavailable) else request.master_addr
    return Preflight(report, address, master.port)


def weigh_intent(probes: ClusterProbes, intent: SlurmLaunchIntent | None, hosts: Sequence[ActiveHost]) -> None:
    """Hand the launch's intent to the scheduler checks, where the survey read a scheduler's job."""
    slurm = probes.slurm
    if intent is None or isinstance(slurm, Unavailable):
        return
    slurm.launch = intent if isinstance(slurm.job, Unavailable) else with_job_cpus(intent, slurm.job, hosts)


def config_findings(config: ConfigToCheck, hosts: list[ActiveHost], facts: dict[str, Maybe[NodeFacts]],
                    hostfile: str) -> list[Finding]:
    """config check's findings for the config the script reads, on the surveyed cluster."""
    report = check_config(load_ds_config(config.path), topology=topology_from_hosts(hosts, hostfile),
                          trainer_argv=config.script_args,
                          runner=Runner.HF_TRAINER if config.hf_trainer else Runner.DEEPSPEED,
                          resources=resources_from_facts(facts, "the preflight survey"))
    return list(report.findings)


def exec_launch(argv: Sequence[str], env: Mapping[str, str] | None = None) -> NoReturn:
    """Replace this process with DeepSpeed's runner (``env`` added to this environment): its signals and
    its exit code are the job's."""
    sys.stdout.flush()
    sys.stderr.flush()
    if env:
        os.execvpe(argv[0], list(argv), {**os.environ, **env})
    os.execvp(argv[0], list(argv))


def run_launch(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run the launch line as a child and return its exit code, passing Ctrl-C and SIGTERM on to it:
    for a launch inside an allocation clusterkit made, which it must release once the job ends."""
    import signal
    import subprocess

    sys.stdout.flush()
    sys.stderr.flush()
    child = subprocess.Popen(list(argv), env={**os.environ, **env} if env else None)
    forwarded = {sig: signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
                 for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in forwarded.items():
            signal.signal(sig, handler)
