"""Slurm checks: what Slurm itself says about the nodes, and what it changes about a DeepSpeed start.

They judge ``ClusterProbes.slurm`` (the job, node states and reasons, read on the head), the facts the
agent gathered inside a task on each node (GPUs it sees, the variables Slurm set), and, for a launch,
what the launch will ask for (``SlurmFacts.launch``). Outside Slurm they do not apply.
"""

from __future__ import annotations

from collections.abc import Iterator

from clusterkit.checks.registry import ClusterView, cluster_check
from clusterkit.core.findings import NotApplicable, Problem, Severity
from clusterkit.core.slurmstate import unusable
from clusterkit.node.facts import NodeFacts, SlurmFacts, SlurmJobFacts, SlurmNodeFacts, Unavailable

#: States in which a node of the job runs nothing (as opposed to DRAIN: no new jobs, this one goes on).
DEAD_STATES = ("DOWN", "NOT_RESPONDING", "FAIL", "POWERED_DOWN", "POWERING_DOWN")


def _slurm(view: ClusterView) -> SlurmFacts:
    if view.probes is None or isinstance(view.probes.slurm, Unavailable):
        raise NotApplicable("not run through Slurm")
    return view.probes.slurm


def _job(view: ClusterView) -> SlurmJobFacts:
    job = _slurm(view).job
    if isinstance(job, Unavailable):
        raise NotApplicable(f"the Slurm job is unknown: {job.reason}")
    return job


def _nodes(view: ClusterView) -> list[SlurmNodeFacts]:
    nodes = _slurm(view).nodes
    if isinstance(nodes, Unavailable):
        raise NotApplicable(f"Slurm's node states are unknown: {nodes.reason}")
    return nodes


def _said(node: SlurmNodeFacts) -> str:
    reason = f": {node.reason}" if node.reason else " (no reason given)"
    by = f" [set by {node.reason_user} at {node.reason_time}]" if node.reason_user or node.reason_time else ""
    return f"{node.name} is {node.state} in Slurm{reason}{by}"


@cluster_check("slurm-node-unavailable", Severity.ERROR, tags=("slurm", "cluster"),
               why="a node of the job that Slurm marked down or not responding runs no rank, so the whole job "
                   "fails to start or hangs at rendezvous; a drained node takes no new job after this one",
               fix="fix the node (the reason says what an admin or Slurm saw), then `scontrol update "
                   "NodeName=NODE State=RESUME`; or leave it out (--exclude NODE, or a new allocation)")
def slurm_node_unavailable(view: ClusterView) -> Iterator[Problem]:
    """Every node of the job is up in Slurm, and none is drained."""
    job = _job(view)
    for node in _nodes(view):
        if node.name not in job.nodes:
            continue
        states = unusable(node)
        if not states:
            continue
        dead = any(state in DEAD_STATES for state in states)
        yield Problem(_said(node) + ("" if dead else "; it runs this job's steps but takes no new job"),
                      where=node.name, host=node.name, severity=None if dead else Severity.WARNING,
                      fix=f"sinfo -R -n {node.name}; once fixed: scontrol update NodeName={node.name} State=RESUME")


@cluster_check("slurm-partition-nodes-unavailable", Severity.WARNING, tags=("slurm", "cluster"),
               why="nodes of the partition that are down or drained shrink what an allocation can get: a request "
                   "for more nodes than are left waits, or fails with `Requested node configuration is not "
                   "available`",
               fix="sinfo -R shows each reason; an admin resumes a fixed node with `scontrol update NodeName=NODE "
                   "State=RESUME`")
def slurm_partition_nodes_unavailable(view: ClusterView) -> Iterator[Problem]:
    """The job's partition has no nodes down or drained."""
    job = _job(view)
    for node in _nodes(view):
        if node.name not in job.nodes and unusable(node):
            yield Problem(_said(node), where=f"partition {job.partition or '(default)'}", host=node.name)


def _visible_gpus(facts: NodeFacts) -> int | None:
    nvidia = facts.nvidia
    if isinstance(nvidia, Unavailable) or isinstance(nvidia.gpus, Unavailable):
        return None
    return len(nvidia.gpus)


@cluster_check("slurm-gpus-hidden", Severity.ERROR, tags=("slurm", "gpu", "cluster"),
               why="the GPUs a task sees are the ones its ranks use: fewer than the job holds leaves GPUs idle "
                   "(or `Duplicate GPU detected` when slots outnumber them); more, with no device cgroup, lets "
                   "DeepSpeed's launch.py set CUDA_VISIBLE_DEVICES=0..N-1 and run on GPUs Slurm gave another job",
               fix="compare `scontrol show node NODE` (Gres) with gres.conf and cgroup.conf (ConstrainDevices=yes); "
                   "request GPUs with --gpus-per-node (or --gres=gpu:N)")
def slurm_gpus_hidden(view: ClusterView) -> Iterator[Problem]:
    """A task on each node sees exactly the GPUs the job holds there."""
    job = _job(view)
    nodes = _slurm(view).nodes
    configured = {} if isinstance(nodes, Unavailable) else {n.name: n.gpus for n in nodes}
    judged = False
    for name, facts in view.reachable().items():
        visible = _visible_gpus(facts)
        held = job.gpus_per_node.get(name, 0)
        has = configured.get(name)
        if visible is None:
            continue
        judged = True
        listed = facts.env_vars.get("CUDA_VISIBLE_DEVICES", "")
        if held and visible < held:
            yield Problem(f"the job holds {held} GPU(s) on {name} but a task there sees {visible}", where=name,
                          host=name, fix=f"scontrol show node {name} (Gres) against gres.conf File= lines; "
                                         "check ConstrainDevices in cgroup.conf")
        elif visible > held:
            # With no device cgroup a task sees every GPU; launch.py then picks 0..slots-1, which are the
            # job's own only when Slurm happened to give it exactly those.
            if held and listed.split(",") == [str(i) for i in range(held)]:
                continue
            holds = f"the job holds {held}" if held else "the job holds none there"
            yield Problem(f"a task on {name} sees {visible} GPUs while {holds} (CUDA_VISIBLE_DEVICES="
                          f"{listed or 'unset'}): DeepSpeed's launch.py sets CUDA_VISIBLE_DEVICES=0..N-1 for its "
                          "ranks, GPUs Slurm may have given another job", where=name, host=name,
                          fix="ConstrainDevices=yes in cgroup.conf (with TaskPlugin=task/cgroup), so tasks see only "
                              "their GPUs, numbered from 0" + ("" if held else "; request GPUs (--gpus-per-node)"))
        elif not held and isinstance(has, int) and has:
            yield Problem(f"{name} has {has} GPU(s) in Slurm but the job holds none, so its tasks see none",
                          where=name, host=name, severity=Severity.WARNING,
                          fix=f"allocate with --gpus-per-node={has} (or --gres=gpu:{has})")
    if not judged:
        raise NotApplicable("no node reported its GPUs (NVML unavailable in the tasks)")


@cluster_check("slurm-cpus-per-task", Severity.WARNING, tags=("slurm", "cpu", "dataloader", "cluster"),
               why="every rank and each of its DataLoader workers is a process; more of them than the CPUs a "
                   "node's task holds run time-sliced, and the input pipeline starves the GPUs",
               fix="allocate more CPUs (--cpus-per-task, which `clusterkit launch` passes to srun: since Slurm "
                   "22.05 srun no longer inherits it), or fewer --dataloader_num_workers")
def slurm_cpus_per_task(view: ClusterView) -> Iterator[Problem]:
    """The CPUs each node's task gets cover its ranks and their DataLoader workers."""
    slurm = _slurm(view)
    intent = slurm.launch
    if intent is None:
        raise NotApplicable("no training command to weigh (clusterkit launch judges this)")
    workers = intent.dataloader_workers
    if workers is None:
        raise NotApplicable("the training command does not say how many DataLoader workers it starts "
                            "(--dataloader_num_workers)")
    job = _job(view)
    processes = intent.ranks_per_node * (1 + workers)
    if intent.launcher == "slurm":
        per_rank = job.cpus_per_task or 1
        per = f"{per_rank} CPU(s) per rank task"
        if 1 + workers > per_rank:
            yield Problem(f"each rank and its {workers} DataLoader worker(s) share {per} (DeepSpeed's Slurm "
                          "launcher runs srun without --cpus-per-task)", where="srun --cpus-per-task")
        return
    for node in job.nodes:
        held = intent.cpus_per_node_task or job.cpus_per_node.get(node)
        if held is not None and processes > held:
            yield Problem(f"{intent.ranks_per_node} rank(s) x (1 + {workers} DataLoader workers) = {processes} "
                          f"processes share {held} CPU(s) on {node}", where=node, host=node)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


@cluster_check("slurm-time-limit-checkpoint", Severity.ERROR, tags=("slurm", "checkpoint", "cluster"),
               why="Slurm kills the job at its time limit; work since the last checkpoint is lost, all of it "
                   "when the first checkpoint would come later than the limit",
               fix="checkpoint more often than the time left, or ask for a longer --time")
def slurm_time_limit_checkpoint(view: ClusterView) -> Iterator[Problem]:
    """The job's time limit leaves room for at least one checkpoint."""
    slurm = _slurm(view)
    intent = slurm.launch
    if intent is None:
        raise NotApplicable("no training command to weigh (clusterkit launch judges this)")
    job = _job(view)
    if job.time_left_s is None:
        raise NotApplicable("the job has no time limit")
    left = _hours(job.time_left_s)
    if intent.no_checkpoints:
        yield Problem(f"the job is killed in {left} and the training command saves no checkpoint "
                      f"({intent.checkpoint_source})", where=f"job {job.job_id} time limit",
                      severity=Severity.WARNING)
        return
    interval = intent.checkpoint_interval_s
    if interval is None:
        raise NotApplicable("the training command does not say how often it checkpoints in time "
                            "(give clusterkit launch --checkpoint-every DURATION)")
    if interval > job.time_left_s:
        yield Problem(f"the first checkpoint comes after {_hours(interval)} ({intent.checkpoint_source}) but the "
                      f"job is killed in {left}", where=f"job {job.job_id} time limit")


#: Variables that make srun shape DeepSpeed's ``srun -n WORLD`` other than it asks.
_INHERITED_SHAPE = ("SLURM_NTASKS_PER_NODE", "SLURM_NTASKS_PER_SOCKET", "SLURM_DISTRIBUTION")


@cluster_check("slurm-startup-env", Severity.ERROR, tags=("slurm", "env", "launcher", "cluster"),
               why="Slurm's variables in the launching shell change how a DeepSpeed job starts: inside a "
                   "multi-task step every task runs the launcher (N copies of the job on the same GPUs); srun "
                   "reads SLURM_NTASKS_PER_NODE and friends as defaults; since 22.05 it ignores "
                   "SLURM_CPUS_PER_TASK; ranks started by DeepSpeed's Slurm launcher get no RANK/WORLD_SIZE",
               fix="launch once, from a shell that is not one task of many (sbatch's batch step, or salloc's "
                   "shell); let `clusterkit launch` build the srun line")
def slurm_startup_env(view: ClusterView) -> Iterator[Problem]:
    """The launching shell's Slurm variables leave DeepSpeed's start-up as intended."""
    slurm = _slurm(view)
    if view.probes is None or isinstance(view.probes.launch_facts, Unavailable):
        raise NotApplicable("the launching machine's environment is unknown")
    env = view.probes.launch_facts.env_vars
    tasks = env.get("SLURM_STEP_NUM_TASKS") or (env.get("SLURM_NTASKS") if "SLURM_STEP_ID" in env else None)
    if "SLURM_STEP_ID" in env and tasks and tasks.isdigit() and int(tasks) > 1:
        yield Problem(f"this shell is task {env.get('SLURM_PROCID', '?')} of {tasks} in step "
                      f"{env.get('SLURM_JOB_ID', '?')}.{env['SLURM_STEP_ID']}: each task that runs the launch "
                      f"starts the whole job, {tasks} times over", where="SLURM_STEP_ID",
                      fix="run the launch in a single task (sbatch's batch script, salloc's shell, or srun -n1)")
    intent = slurm.launch
    if intent is None or intent.launcher != "slurm":
        return
    for name in _INHERITED_SHAPE:
        if name in env:
            yield Problem(f"{name}={env[name]} is set: DeepSpeed's `srun -n WORLD` takes it as a default and "
                          "places ranks otherwise than the hostfile's slots", where=name,
                          fix=f"unset {name} before launching, or let clusterkit build the srun line "
                              "(--launcher srun)")
    if env.get("SLURM_CPUS_PER_TASK", "1") != "1" and "SRUN_CPUS_PER_TASK" not in env:
        yield Problem(f"SLURM_CPUS_PER_TASK={env['SLURM_CPUS_PER_TASK']} but srun (22.05+) ignores it: each "
                      "rank gets one CPU", where="SRUN_CPUS_PER_TASK", severity=Severity.WARNING,
                      fix="export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK")
    yield Problem("DeepSpeed's Slurm launcher starts `python SCRIPT` with no RANK, LOCAL_RANK, WORLD_SIZE or "
                  "MASTER_ADDR: deepspeed.init_distributed() then needs mpi4py and an MPI that speaks Slurm's "
                  "PMI to find them", where="--launcher slurm", severity=Severity.WARNING,
                  fix="use clusterkit launch's srun line (--launcher srun, the default under Slurm), which runs "
                      "DeepSpeed's launch.py on each node and sets every rank's variables")


@cluster_check("slurm-nodecheck-installed", Severity.WARNING, tags=("slurm", "nodecheck", "cluster"),
               why="clusterkit as Slurm's HealthCheckProgram drains a node whose GPUs, /dev/shm or libraries are "
                   "broken before the next job lands there; on a node without it, or with another version, that "
                   "node is judged otherwise or not at all",
               fix="clusterkit nodecheck install   # prints the slurm.conf lines and the scripts for every node")
def slurm_nodecheck_installed(view: ClusterView) -> Iterator[Problem]:
    """clusterkit is Slurm's health check on every node of the job, at this version."""
    from clusterkit import __version__
    from clusterkit.core.hostlist import compress

    hooks = _slurm(view).health_check
    if isinstance(hooks, Unavailable):
        raise NotApplicable(f"Slurm's hooks are unknown: {hooks.reason}")
    if not hooks.program:
        yield Problem("Slurm runs no HealthCheckProgram: nothing drains a node that goes bad between jobs",
                      where="slurm.conf", severity=Severity.INFO)
        return
    versions: dict[str, list[str]] = {}
    missing: dict[str, list[str]] = {}
    for node, said in hooks.versions.items():
        if isinstance(said, Unavailable):
            missing.setdefault(said.reason, []).append(node)
        else:
            versions.setdefault(said, []).append(node)
    if not versions:
        yield Problem(f"HealthCheckProgram={hooks.program} is not clusterkit's nodecheck "
                      f"({'; '.join(missing) or 'no node answered'}): it is left to that program",
                      where="slurm.conf", severity=Severity.INFO)
        return
    every = f" every {hooks.interval_s}s" if hooks.interval_s else ""
    installed = compress(node for node, said in hooks.versions.items() if not isinstance(said, Unavailable))
    for why, nodes in missing.items():
        yield Problem(f"{compress(nodes)}: {hooks.program} is {why}; clusterkit's health check runs{every} on "
                      f"{installed} only", where=hooks.program, host=nodes[0])
    for version, nodes in versions.items():
        if version != __version__:
            yield Problem(f"{compress(nodes)} run clusterkit {version} as Slurm's health check{every}; this is "
                          f"clusterkit {__version__}", where=hooks.program, host=nodes[0],
                          fix=f"install clusterkit {__version__} on {compress(nodes)}")
    if not missing and list(versions) == [__version__]:
        yield Problem(f"clusterkit {__version__} is Slurm's health check{every} on every node of the job "
                      f"({installed})", where=hooks.program, severity=Severity.INFO)
