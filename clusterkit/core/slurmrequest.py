"""What clusterkit asks ``salloc`` for, in which environment, and whether Slurm can grant it now.

Pure: the commands are run by :mod:`clusterkit.cluster.remote.slurm`.

- :class:`SlurmRequest`: the allocation the ``--slurm`` flags ask for;
- :func:`request_environment`: the environment ``salloc`` runs in: this process's, without the
  variables Slurm sets inside a job (those of a job clusterkit is not in), keeping every variable a
  user configures Slurm's clients with (``SLURM_CONF``, ``SLURM_CLUSTERS``, ``SALLOC_ACCOUNT``...);
- :func:`requested_shape` and :func:`shortfall`: the partition(s) and node count a request needs, and,
  read against the partition's node states, why it cannot be had now (drained or down nodes, a partition
  that is not up) with what can be had instead. Nodes that are only busy are no shortfall: they free up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clusterkit.core.hostlist import compress, expand
from clusterkit.core.slurmstate import parse_record, unusable
from clusterkit.node.facts import SlurmNodeFacts


@dataclass(frozen=True)
class SlurmRequest:
    """What to ask ``salloc`` for when clusterkit is not inside an allocation yet (``--slurm``)."""

    partition: str | None = None
    #: ``--nodes``: a count or ``MIN-MAX``.
    nodes: str | None = None
    nodelist: str | None = None
    time: str | None = None
    extra: tuple[str, ...] = ()
    #: How long to wait for the allocation before giving up (``salloc --immediate``).
    wait_s: float = 60.0

    def salloc_args(self) -> list[str]:
        args = []
        if self.partition:
            args.append(f"--partition={self.partition}")
        if self.nodes:
            args.append(f"--nodes={self.nodes}")
        if self.nodelist:
            args.append(f"--nodelist={self.nodelist}")
        if self.time:
            args.append(f"--time={self.time}")
        return [*args, *self.extra]


# ------------------------------------------------------------------------------------ environment

#: Variables that configure Slurm's client commands, whatever job (if any) they run in: their man pages'
#: "ENVIRONMENT VARIABLES" (salloc, srun, sbatch, sbcast, sinfo, squeue, scontrol, scancel). A job's
#: environment holds some of them too (salloc and sbatch set SLURM_CONF), and they stay.
CLIENT_CONFIG_VARIABLES = frozenset({
    "SLURM_CONF", "SLURM_CLUSTERS", "SLURM_DEBUG_FLAGS", "SLURM_EXIT_ERROR", "SLURM_EXIT_IMMEDIATE",
    "SLURM_HINT", "SLURM_TIME_FORMAT", "SLURM_BITSTR_LEN", "SLURM_TOPO_LEN", "SLURM_CONF_OUT",
})
#: What Slurm sets in the environment of a job, its steps and tasks (the "OUTPUT ENVIRONMENT VARIABLES"
#: of salloc, sbatch and srun, and the undocumented ones they carry along): families by prefix...
JOB_VARIABLE_PREFIXES = (
    "SLURM_JOB_", "SLURM_STEP_", "SLURM_ARRAY_", "SLURM_HET_", "SLURM_CPU_BIND", "SLURM_MEM_BIND",
    "SLURM_SRUN_COMM_", "SLURM_TOPOLOGY_ADDR", "SLURM_PTY_", "SLURM_SPANK_", "SLURM_NTASKS", "SLURM_GPUS",
    "SLURM_CPUS_", "SLURM_MEM_PER_", "SLURM_DIST", "SLURM_SUBMIT_", "SLURM_TASK", "SLURMD_",
)
#: ... and single names.
JOB_VARIABLES = frozenset({
    "SLURM_JOBID", "SLURM_STEPID", "SLURM_NODELIST", "SLURM_NNODES", "SLURM_NPROCS", "SLURM_NODEID",
    "SLURM_PROCID", "SLURM_LOCALID", "SLURM_GTIDS", "SLURM_CLUSTER_NAME", "SLURM_NODE_ALIASES",
    "SLURM_CONTAINER", "SLURM_GPU_BIND", "SLURM_GPU_FREQ", "SLURM_CPU_FREQ_REQ", "SLURM_OVERCOMMIT",
    "SLURM_PROFILE", "SLURM_SHARDS_ON_NODE", "SLURM_THREADS_PER_CORE", "SLURM_LAUNCH_NODE_IPADDR",
    "SLURM_PRIO_PROCESS", "SLURM_UMASK", "SLURM_EXPORT_ENV", "SLURM_RESTART_COUNT", "SLURM_WORKING_CLUSTER",
    "SLURM_SCRIPT_CONTEXT", "SLURM_MPI_TYPE", "SLURM_TRES_PER_TASK", "SLURM_EXACT", "SLURM_OVERLAP",
    "SRUN_DEBUG", "SRUN_CPUS_PER_TASK", "SBATCH_MEM_BIND", "SBATCH_MEM_BIND_LIST", "SBATCH_MEM_BIND_PREFER",
    "SBATCH_MEM_BIND_TYPE", "SBATCH_MEM_BIND_VERBOSE",
})


def job_variable(name: str) -> bool:
    """Whether Slurm sets ``name`` for a job (``SLURM_JOB_ID``, ``SLURM_NTASKS``, ``SLURMD_NODENAME``...),
    as opposed to a variable a user configures Slurm's clients with."""
    if name in CLIENT_CONFIG_VARIABLES:
        return False
    return name in JOB_VARIABLES or name.startswith(JOB_VARIABLE_PREFIXES) or "_HET_GROUP_" in name


def request_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for ``salloc`` asking for a new job: ``environ`` without the variables of a job
    clusterkit is not in; ``SLURM_CONF``, ``SALLOC_*`` and the rest of the user's configuration stay."""
    return {name: value for name, value in environ.items() if not job_variable(name)}


# -------------------------------------------------------------------------------------- partitions


@dataclass(frozen=True)
class Partition:
    """A partition as ``scontrol show partition`` shows it."""

    name: str
    #: ``UP``, ``DOWN`` (jobs queue, none start), ``DRAIN`` or ``INACTIVE`` (no new jobs).
    state: str
    default: bool = False


def parse_partitions(text: str) -> list[Partition]:
    """``scontrol show partition --oneliner`` -> one Partition per ``PartitionName=`` record."""
    partitions = []
    for line in text.splitlines():
        if not line.strip().startswith("PartitionName="):
            continue
        fields: dict[str, str] = {}
        for key, value in parse_record(line):
            fields.setdefault(key, value)
        partitions.append(Partition(fields["PartitionName"], fields.get("State", "UP").upper(),
                                    fields.get("Default", "NO").upper() == "YES"))
    return partitions


@dataclass(frozen=True)
class RequestedShape:
    """What a request needs from Slurm: a partition among ``partitions`` ("" for the default one), at
    least ``count`` nodes, every node of ``nodelist`` among them."""

    partitions: tuple[str, ...]
    count: int
    nodelist: tuple[str, ...] = ()

    @property
    def wanted(self) -> int:
        return max(self.count, len(self.nodelist))


def _option(extra: Sequence[str], short: str, long: str) -> str | None:
    """The value of salloc's option ``-X V``/``-XV``/``--long V``/``--long=V`` in ``extra`` (the last one
    given, as salloc takes it); None when absent."""
    value = None
    for i, word in enumerate(extra):
        if word in (short, long):
            value = extra[i + 1] if i + 1 < len(extra) else ""
        elif word.startswith(long + "="):
            value = word[len(long) + 1:]
        elif word.startswith(short) and not word.startswith("--") and len(word) > len(short):
            value = word[len(short):]
    return value


def requested_shape(request: SlurmRequest, environ: Mapping[str, str]) -> RequestedShape | None:
    """The partition(s) and nodes ``request`` needs (salloc's rules: options over ``SALLOC_*``, one node when
    none is said); None where clusterkit cannot tell (another cluster, a node list in a file, a count it
    does not read), so that salloc alone judges."""
    extra = request.extra
    if _option(extra, "-M", "--clusters") or environ.get("SALLOC_CLUSTERS") or environ.get("SLURM_CLUSTERS"):
        return None
    # --slurm-args come after the flags on salloc's line, so theirs is the value salloc takes.
    partition = _option(extra, "-p", "--partition") or request.partition or environ.get("SALLOC_PARTITION") or ""
    nodes = _option(extra, "-N", "--nodes") or request.nodes or "1"
    counted = re.fullmatch(r"\s*(\d+)\s*(?:-\s*\d*\s*)?", nodes)
    nodelist = _option(extra, "-w", "--nodelist") or request.nodelist or ""
    if not counted or "/" in nodelist:
        return None
    try:
        named = tuple(expand(nodelist)) if nodelist else ()
    except ValueError:
        return None
    return RequestedShape(tuple(p.strip() for p in partition.split(",")), int(counted.group(1)), named)


# -------------------------------------------------------------------------------------- shortfall

#: States in which Slurm starts no new job on a node until someone acts (a node powered down to save
#: energy, rebooting, or reserved is not among them: Slurm brings it back, so salloc waits for it).
NO_NEW_JOBS = ("DOWN", "DRAIN", "FAIL", "NOT_RESPONDING", "INVALID_REG")
#: At most this many unavailable nodes are named in one message; `sinfo -R` lists the rest.
NAMED_AT_MOST = 5


@dataclass(frozen=True)
class Shortfall:
    """Why a request cannot be had now (one line), and what can be asked for instead."""

    message: str
    fix: str


def takes_no_new_job(node: SlurmNodeFacts) -> bool:
    """Whether Slurm starts no new job on ``node`` now (drained, down, failed, not responding)."""
    return any(state in NO_NEW_JOBS for state in unusable(node))


def _said(node: SlurmNodeFacts) -> str:
    reason = f": {node.reason}" if node.reason else " (no reason given)"
    by = f" [set by {node.reason_user or '?'} at {node.reason_time or '?'}]" if node.reason_user or node.reason_time \
        else ""
    return f"{node.name} is {node.state}{reason}{by}"


def _unavailable(nodes: Sequence[SlurmNodeFacts], partition: str) -> str:
    named = "; ".join(_said(n) for n in nodes[:NAMED_AT_MOST])
    more = len(nodes) - NAMED_AT_MOST
    return named + (f"; and {more} more (sinfo -R -p {partition})" if more > 0 else "")


def _judge(shape: RequestedShape, partition: Partition, nodes: Sequence[SlurmNodeFacts]) -> Shortfall | bool:
    """Why ``shape`` cannot be had now in ``partition``; True when enough of its nodes take jobs, False when
    what Slurm shows here does not tell."""
    where = f"partition {partition.name}"
    members = [n for n in nodes if partition.name in n.partitions]
    if not members or not set(shape.nodelist) <= {n.name for n in members}:
        return False  # not what this machine is shown of the partition (or a node salloc rejects itself)
    asked = (f"--nodelist {compress(shape.nodelist)}" if shape.nodelist and shape.wanted == len(shape.nodelist)
             else _count(shape.wanted, "node"))
    if partition.state != "UP":
        return Shortfall(f"{asked} cannot be had now: {where} is {partition.state}, so Slurm starts no job there",
                         f"scontrol show partition {partition.name}; ask an admin to set it UP, or choose "
                         "another partition (--partition)")
    free = [n for n in members if not takes_no_new_job(n)]
    blocked = [n for n in members if takes_no_new_job(n)]
    blocked_named = [n for n in blocked if n.name in shape.nodelist]
    if len(free) >= shape.wanted and not blocked_named:
        return True  # enough nodes take jobs: if some are busy, salloc waits for them
    shown = blocked_named or blocked
    of_its = f"of its {_count(len(members), 'node')}"
    have = (f"{len(free)} {of_its} {'takes' if len(free) == 1 else 'take'} jobs ({compress(n.name for n in free)})"
            if free else f"none {of_its} takes a job")
    message = f"{asked} cannot be had now in {where}: {have}" + (
        f"; {_unavailable(shown, partition.name)}" if shown else "")
    offers = []
    usable_named = [name for name in shape.nodelist if name not in {n.name for n in blocked_named}]
    if usable_named:
        offers.append(f"--nodelist {compress(usable_named)}")
    if free:
        offers.append(f"--nodes {min(len(free), shape.wanted)}" + (" (no --nodelist)" if shape.nodelist else ""))
    fixes = [f"ask for what can be had now: {' or '.join(offers)}" if offers else ""]
    if shown:
        names = compress(n.name for n in shown)
        fixes.append(f"once fixed, an admin returns {names} to service: scontrol update NodeName={names} "
                     "State=RESUME")
    if len(members) < shape.wanted:
        fixes.append(f"{where} has only {_count(len(members), 'node')}")
    return Shortfall(message, "; ".join(filter(None, fixes)))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _judgements(shape: RequestedShape, partitions: Sequence[Partition], nodes: Sequence[SlurmNodeFacts]
                ) -> list[Shortfall | bool]:
    judged: list[Shortfall | bool] = []
    for name in shape.partitions:
        partition = next((p for p in partitions if (p.name == name if name else p.default)), None)
        # None: unknown here (salloc names it), or no default partition.
        judged.append(False if partition is None else _judge(shape, partition, nodes))
    return judged


def shortfall(shape: RequestedShape, partitions: Sequence[Partition], nodes: Sequence[SlurmNodeFacts]
              ) -> Shortfall | None:
    """Why ``shape`` cannot be had now in any of its partitions, judged on their states and their nodes';
    None when it can (its nodes may still be busy), or when what Slurm shows does not tell."""
    judged = _judgements(shape, partitions, nodes)
    found = [j for j in judged if isinstance(j, Shortfall)]
    if not found or len(found) < len(judged):
        return None
    return Shortfall("; ".join(s.message for s in found), "; ".join(dict.fromkeys(s.fix for s in found)))


def grantable(shape: RequestedShape, partitions: Sequence[Partition], nodes: Sequence[SlurmNodeFacts]) -> bool:
    """Whether Slurm shows enough nodes that take jobs for ``shape`` in one of its partitions: a salloc that
    then waits waits for busy nodes."""
    return any(j is True for j in _judgements(shape, partitions, nodes))
