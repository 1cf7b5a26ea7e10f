"""What clusterkit asks ``salloc`` for, and in which environment.

Pure: the commands are run by :mod:`clusterkit.remote.slurm`.

- :class:`SlurmRequest`: the allocation the ``--slurm`` flags ask for;
- :func:`request_environment`: the environment ``salloc`` runs in: this process's, without the
  variables Slurm sets inside a job (those of a job clusterkit is not in), keeping every variable a
  user configures Slurm's clients with (``SLURM_CONF``, ``SLURM_CLUSTERS``, ``SALLOC_ACCOUNT``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


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
