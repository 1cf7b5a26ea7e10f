"""Launching a job as a library: the preflight (the doctor's survey and checks, plus config check of
the config the script reads) and the run step, which hands the process to DeepSpeed's runner.

The ``deepspeed`` line itself is built by :mod:`clusterkit.launchline` (pure).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console

from clusterkit.checks import load_checks
from clusterkit.checks.registry import select_checks
from clusterkit.doctor import judge_cluster
from clusterkit.dsconfig.check import check_config
from clusterkit.dsconfig.load import load_ds_config
from clusterkit.dsconfig.resources import resources_from_facts
from clusterkit.dsconfig.rules import Runner, load_rules
from clusterkit.dsconfig.topology import topology_from_hosts
from clusterkit.facts import Maybe, NodeFacts, SlurmLaunchIntent, Unavailable
from clusterkit.findings import Finding
from clusterkit.inventory import ActiveHost
from clusterkit.remote import SshSettings
from clusterkit.remote.slurm import Allocation
from clusterkit.report import DoctorReport
from clusterkit.survey import AUTO_PORT, SurveyOptions, survey_nodes

if TYPE_CHECKING:
    from clusterkit.cluster import Nodes

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
    """What the preflight looks at and how."""

    hosts: list[ActiveHost]
    hostfile: str
    python: str
    settings: SshSettings = field(default_factory=SshSettings)
    timeout_s: float = 30.0
    master_addr: str | None = None
    #: None: DeepSpeed's 29500 if free on the first host, else a free one.
    master_port: int | None = None
    #: Doctor check ids/tags and config rule ids to leave out.
    skip: Sequence[str] = ()
    config: ConfigToCheck | None = None
    #: The training script as the launch line names it (relative to this directory); None for a module.
    script: str | None = None
    #: Reach the nodes through srun in this allocation (the hosts are its nodes) instead of SSH.
    slurm: Allocation | None = None
    #: What the launch will ask of Slurm, for the Slurm checks to weigh against the allocation.
    slurm_intent: SlurmLaunchIntent | None = None


@dataclass(frozen=True)
class Preflight:
    """The preflight's report, and the rendezvous it tested (to launch with)."""

    report: DoctorReport
    master_addr: str | None
    master_port: int | None


def preflight(request: PreflightRequest, console: Console | None = None) -> Preflight:
    """Survey and judge the nodes, check the config. ``console`` shows the survey's progress."""
    load_checks()
    rules = load_rules()
    skip = [name for name in request.skip if name not in rules] + list(NOT_FOR_A_LAUNCH)
    specs = select_checks(skip=skip)
    options = SurveyOptions(python=request.python, timeout_s=request.timeout_s, master_addr=request.master_addr,
                            master_port=AUTO_PORT if request.master_port is None else request.master_port,
                            script=request.script)
    started = time.time()
    from clusterkit.progress import nodes_view

    nodes = _request_nodes(request)
    with nodes_view(nodes, "surveying", console) as progress:
        facts, probes = survey_nodes(nodes, options, progress)
    if request.slurm_intent is not None and not isinstance(probes.slurm, Unavailable):
        probes.slurm.launch = request.slurm_intent
    report = judge_cluster(specs, request.hosts, facts, probes, started, request.hostfile)
    if request.config is not None:
        report.findings += [f for f in config_findings(request.config, request.hosts, facts, request.hostfile)
                            if f.check_id not in request.skip]
    report.duration_s = time.time() - started
    master = probes.master
    if isinstance(master, Unavailable):
        return Preflight(report, request.master_addr, request.master_port)
    address = master.address if not isinstance(master.address, Unavailable) else request.master_addr
    return Preflight(report, address, master.port)


def _request_nodes(request: PreflightRequest) -> Nodes:
    """Interim, until launch takes ``Nodes`` itself: the request's hosts, reached as it says."""
    if request.slurm is not None:
        from clusterkit.cluster.slurm import SlurmNodes

        return SlurmNodes(request.slurm, request.hosts,
                          agent_dir=os.environ.get("CLUSTERKIT_AGENT_DIR") or None)
    from clusterkit.cluster.ssh import SshNodes

    return SshNodes(request.hosts, request.settings, hostfile=request.hostfile)


def config_findings(config: ConfigToCheck, hosts: list[ActiveHost], facts: dict[str, Maybe[NodeFacts]],
                    hostfile: str) -> list[Finding]:
    """config check's findings for the config the script reads, on the surveyed cluster."""
    report = check_config(load_ds_config(config.path), topology=topology_from_hosts(hosts, hostfile),
                          trainer_argv=config.script_args,
                          runner=Runner.HF_TRAINER if config.hf_trainer else Runner.DEEPSPEED,
                          resources=resources_from_facts(facts, "the preflight survey"))
    return list(report.findings)


def exec_launch(argv: Sequence[str]) -> NoReturn:
    """Replace this process with DeepSpeed's runner: its signals and its exit code are the job's."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], list(argv))


def run_launch(argv: Sequence[str]) -> int:
    """Run the launch line as a child and return its exit code, passing Ctrl-C and SIGTERM on to it:
    for a launch inside an allocation clusterkit made, which it must release once the job ends."""
    import signal
    import subprocess

    sys.stdout.flush()
    sys.stderr.flush()
    child = subprocess.Popen(list(argv))
    forwarded = {sig: signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
                 for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for sig, handler in forwarded.items():
            signal.signal(sig, handler)
