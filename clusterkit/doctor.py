"""The doctor as a library: read this machine or survey the nodes, run the checks, return the report.

Commands (doctor, launch's preflight, the workloads' pre-checks) call these; they parse arguments and
render, nothing else.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from clusterkit.checks.registry import (
    CheckSpec,
    ClusterView,
    NodeContext,
    checks_for_machine,
    deepspeed_exports,
    run_cluster_checks,
    run_node_checks,
)
from clusterkit.core.findings_report import DoctorReport
from clusterkit.core.inventory import ActiveHost
from clusterkit.node.facts import ClusterProbes, Maybe, NodeFacts, Unavailable
from clusterkit.survey import SurveyOptions, survey_nodes

if TYPE_CHECKING:
    from clusterkit.cluster import Nodes, ProgressListener


def doctor_here(specs: list[CheckSpec], python: str | None, timeout_s: float, fresh: bool = False) -> DoctorReport:
    """Collect this machine's facts in-process and judge them."""
    from clusterkit.node.collect.node import CollectOptions, collect_node

    started = time.time()
    options = CollectOptions(section_timeout_s=timeout_s, use_probe_cache=not fresh)
    if python:
        options.python = python
    facts = collect_node(options)
    host = facts.host.hostname
    findings = run_node_checks(checks_for_machine(specs, node=True, launch=True), facts, NodeContext(host=host))
    return DoctorReport(hosts=[host], facts={host: facts}, findings=findings, started_at=started,
                        duration_s=time.time() - started)


def judge_cluster(specs: list[CheckSpec], hosts: list[ActiveHost], facts: dict[str, Maybe[NodeFacts]],
                  probes: ClusterProbes | None, started: float, hostfile: str) -> DoctorReport:
    """Run node checks on every reachable node, launch checks on this machine, then cluster-wide checks."""
    findings = []
    launch_name = probes.head if probes is not None else None
    local_only = probes is not None and probes.local_only
    # Ranks of an allocation are started by srun, which needs no SSH and exports the environment itself.
    via_slurm = probes is not None and not isinstance(probes.slurm, Unavailable)
    here = probes.launch_facts if probes is not None else Unavailable("no survey")
    # pdsh puts the launching machine's exports before every rank's command, over each node's own shell.
    exports = None if local_only or via_slurm or isinstance(here, Unavailable) else deepspeed_exports(here)
    for host in hosts:
        node = facts.get(host.name, Unavailable("not collected"))
        if isinstance(node, Unavailable):
            continue
        is_launch = host.name == launch_name
        chosen = checks_for_machine(specs, node=True, launch=local_only and is_launch,
                                    launch_judged_apart=is_launch and not local_only)
        ctx = NodeContext(host=host.name, expected_gpus=len(host.slots), is_launch_node=is_launch,
                          needs_sshd=not local_only and not via_slurm, multi_node=not local_only, via_slurm=via_slurm,
                          launch_exports=exports)
        findings += run_node_checks(chosen, node, ctx)
    if probes is not None and launch_name is not None and not local_only and not isinstance(here, Unavailable):
        ctx = NodeContext(host=launch_name, is_launch_node=True, via_slurm=via_slurm,
                          needs_sshd=probes.head_in_hostfile and not via_slurm)
        findings += run_node_checks(checks_for_machine(specs, node=False, launch=True), here, ctx)
    findings += run_cluster_checks(specs, ClusterView(hosts=hosts, nodes=facts, probes=probes, hostfile=hostfile))
    return DoctorReport(hosts=[h.name for h in hosts], facts=facts, findings=findings, hostfile=hostfile,
                        started_at=started, duration_s=time.time() - started)


def doctor_cluster(specs: list[CheckSpec], nodes: Nodes, options: SurveyOptions, hostfile: str = "",
                   progress: ProgressListener | None = None) -> tuple[DoctorReport, ClusterProbes]:
    """Survey every node of ``nodes`` and judge them; the report and what the survey probed.

    ``hostfile`` names where the hosts came from; for an allocation, "slurm job ID" when it is not given.
    """
    started = time.time()
    facts, probes = survey_nodes(nodes, options, progress)
    return judge_cluster(specs, nodes.hosts, facts, probes, started, hostfile or hosts_source(probes)), probes


def hosts_source(probes: ClusterProbes) -> str:
    """Where the hosts came from when no hostfile named them: the scheduler's job, if any."""
    if isinstance(probes.slurm, Unavailable) or isinstance(probes.slurm.job, Unavailable):
        return ""
    return f"slurm job {probes.slurm.job.job_id}"
