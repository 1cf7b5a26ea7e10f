"""The workloads as one library call: what ``clusterkit doctor --workloads`` runs after its checks, and
the pieces ``clusterkit bench`` shares with it (the expectation a sweep is judged against, one GPU run).

Typed options in, findings out: no argparse, nothing printed (progress goes to the context's views).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from clusterkit.core.findings import Finding
from clusterkit.core.inventory import ActiveHost
from clusterkit.errors import UsageError
from clusterkit.node.facts import Maybe, NodeFacts, Unavailable
from clusterkit.workloads import collectives, gpu_health, zero_suite
from clusterkit.workloads.expect import Expectation, expected_busbw
from clusterkit.workloads.session import WorkloadContext, WorkloadRun

#: What ``doctor --workloads`` can run, in the order it runs them.
WORKLOADS = ("collectives", "gpu", "zero")
#: The largest message of the doctor's collective sweep (a check, not a benchmark).
DOCTOR_MAX_BYTES = "4M"


def chosen_workloads(text: str) -> list[str]:
    """The workloads a comma-separated list names; UsageError for one that does not exist."""
    wanted = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in WORKLOADS]
    if unknown:
        raise UsageError(f"--workloads: unknown {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    return wanted


def backend_of(facts: Mapping[str, Maybe[NodeFacts]]) -> str:
    """nccl when the training env sees CUDA on the nodes, else gloo (what DeepSpeed would pick)."""
    for node in facts.values():
        if isinstance(node, Unavailable):
            continue
        env = node.python_env
        if not isinstance(env, Unavailable) and env.torch_cuda_available is True:
            return "nccl"
    return "gloo"


def expectation_for(ctx: WorkloadContext, facts: Mapping[str, Maybe[NodeFacts]],
                    hosts: Sequence[ActiveHost] | None = None) -> Expectation:
    """The bus bandwidth a sweep over ``hosts`` (default: all) should reach, from the nodes' facts."""
    if not facts:
        return Expectation(None, reason="no facts")
    return expected_busbw(facts, ctx.ranks_per_node(hosts), backend_of(facts))


def gpu_run(ctx: WorkloadContext, iters: int = 10, allow_cpu: bool = False, mem_mib: int = 0,
            matmul_n: int = 0) -> tuple[WorkloadRun, gpu_health.GpuHealth]:
    """Every GPU (or, with ``allow_cpu``, CPU) measured at once; the run and its readings."""
    args = ["--iters", str(iters), "--mem-mib", str(mem_mib), "--matmul-n", str(matmul_n)]
    args += ["--allow-cpu"] if allow_cpu else []
    run = ctx.launch("gpu_health.py", args, "gpu health")
    return run, gpu_health.readings_from(run.outcome, run.rank_hosts)


def run_workloads(ctx: WorkloadContext, wanted: Sequence[str], facts: Mapping[str, Maybe[NodeFacts]],
                  announce: Callable[[str], None] | None = None) -> list[Finding]:
    """Run each of ``wanted`` (names from :data:`WORKLOADS`) across ``ctx``'s nodes; every finding,
    the workloads' judgements and their runs' diagnoses. ``announce(name)`` as each one starts."""
    findings: list[Finding] = []
    for name in wanted:
        if announce is not None:
            announce(name)
        if name == "collectives":
            report = collectives.run_collectives(ctx, collectives.CollectivesOptions(max_bytes=DOCTOR_MAX_BYTES),
                                                 expectation_for(ctx, facts))
            findings += report.findings + report.run.diagnosis.findings
        elif name == "gpu":
            run, health = gpu_run(ctx)
            findings += gpu_health.judge(health, facts) + run.diagnosis.findings
        elif name == "zero":
            zero = zero_suite.run_zero(ctx, zero_suite.ZeroOptions())
            findings += zero.findings + [f for run in zero.runs for f in run.diagnosis.findings]
        else:
            raise UsageError(f"--workloads: unknown {name}; choose from {', '.join(WORKLOADS)}")
    return findings
