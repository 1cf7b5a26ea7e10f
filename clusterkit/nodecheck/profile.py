"""Which checks run in each of Slurm's three hooks, what they collect, and the time each may take.

Only this machine's own facts, read in-process (no SSH, no cluster checks, no Python-env probe: the
interpreter a job uses is the job's business, and probing it costs seconds). The checks are the ones
that say the hardware or the node's setup is broken for every job, whoever submits it.

Budgets: slurmd kills a ``HealthCheckProgram`` after 60 s, and runs it on every node at once, so the
health check must finish well inside that, ``scontrol`` calls included. A prolog delays every job's
start, so it gets less; the epilog runs after the job, with the health check's budget.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Hook(enum.StrEnum):
    """Where Slurm runs clusterkit: ``HealthCheckProgram``, ``Prolog`` or ``Epilog``."""

    HEALTH = "health"
    PROLOG = "prolog"
    EPILOG = "epilog"


#: GPU state that makes every job on the node fail or corrupt results (cheap: NVML and the kernel log).
GPU_CHECKS = (
    "nvml-unavailable", "xid-critical", "xid-events", "ecc-uncorrectable-volatile", "ecc-aggregate-uncorrectable",
    "retired-pages-pending", "row-remap-failure", "row-remap-pending", "nvlink-link-down", "nvlink-errors",
    "pcie-width-degraded", "pcie-gen-degraded", "pcie-replay-errors", "gpu-hw-slowdown",
    "gpu-compute-mode-prohibited", "gpu-temperature",
)
#: The node's own setup that every job needs (/dev/shm, RDMA ports, the driver's library).
NODE_CHECKS = ("shm-too-small", "shm-full", "ib-no-active-port", "ib-port-down", "libcuda-not-resolvable")
#: After a job: processes it left holding a GPU.
AFTER_JOB_CHECKS = ("gpu-processes-present",)


@dataclass(frozen=True)
class Profile:
    """What one hook collects and judges, and its hard time budget."""

    hook: Hook
    sections: tuple[str, ...]
    checks: tuple[str, ...]
    #: Wall-clock limit of the whole run (collection, checks, scontrol): a watchdog ends the process there.
    budget_s: float
    #: Deadline of one collection section; a section still running then counts as hung.
    section_timeout_s: float
    #: Deadline of one ``scontrol`` call.
    scontrol_timeout_s: float = 8.0


PROFILES = {
    Hook.HEALTH: Profile(Hook.HEALTH, ("system", "nvidia", "network", "cuda"), GPU_CHECKS + NODE_CHECKS,
                         budget_s=40.0, section_timeout_s=20.0),
    Hook.PROLOG: Profile(Hook.PROLOG, ("system", "nvidia", "network", "cuda"), GPU_CHECKS + NODE_CHECKS,
                         budget_s=25.0, section_timeout_s=12.0, scontrol_timeout_s=5.0),
    Hook.EPILOG: Profile(Hook.EPILOG, ("system", "nvidia", "network", "cuda"),
                         GPU_CHECKS + NODE_CHECKS + AFTER_JOB_CHECKS, budget_s=40.0, section_timeout_s=20.0),
}


def profile_for(hook: Hook, budget_s: float | None = None) -> Profile:
    """The hook's profile; ``budget_s`` shortens it (section deadline and scontrol calls scale with it)."""
    base = PROFILES[hook]
    if budget_s is None or budget_s >= base.budget_s:
        return base
    share = budget_s / base.budget_s
    return Profile(base.hook, base.sections, base.checks, budget_s, base.section_timeout_s * share,
                   max(1.0, base.scontrol_timeout_s * share))
