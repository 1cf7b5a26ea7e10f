"""Operating-system checks: /dev/shm, resource limits, disk space and where JIT caches live."""

from __future__ import annotations

import math
from collections.abc import Iterator

from clusterkit.checks.gpu import cpu_only_run, node_gpus
from clusterkit.checks.registry import NodeContext, node_check
from clusterkit.core.findings import NotApplicable, Problem, Severity, require
from clusterkit.node.facts import NodeFacts, ResourceLimit, known

#: Filesystems shared over the network: a cache there is shared (and locked) by every node.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "glusterfs", "fuse.glusterfs",
    "ceph", "fuse.ceph", "fuse.sshfs", "9p", "fuse.s3fs", "fuse.gcsfuse", "afs", "orangefs", "wekafs",
})
#: DiskFacts purposes that name a JIT cache, with the variable that moves it.
CACHE_PURPOSES = {"torch_extensions": "TORCH_EXTENSIONS_DIR", "triton_cache": "TRITON_CACHE_DIR",
                  "triton": "TRITON_CACHE_DIR"}
_LIMIT_ALIASES = {
    "memlock": ("memlock", "rlimit_memlock", "max locked memory"),
    "nofile": ("nofile", "rlimit_nofile", "open files"),
}


def human_bytes(value: float) -> str:
    """``67108864`` -> ``64 MiB``; ``1.5 GiB``."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size:
            scaled = value / size
            return f"{scaled:.0f} {unit}" if scaled == int(scaled) else f"{scaled:.1f} {unit}"
    return f"{value:.0f} B"


def find_limit(facts: NodeFacts, name: str) -> ResourceLimit:
    """The ``memlock`` / ``nofile`` limit (bytes for memlock), or skip when it was not read."""
    system = require(facts.system, "system facts")
    limits = require(system.limits, "resource limits")
    aliases = _LIMIT_ALIASES.get(name, (name,))
    for limit in limits:
        if limit.name.lower() in aliases:
            return limit
    raise NotApplicable(f"limit {name} not among the collected limits")


def _local_ranks(facts: NodeFacts, ctx: NodeContext) -> int | None:
    """GPU ranks this node runs: hostfile slots, else its GPUs; None on a CPU-only run."""
    if cpu_only_run(facts):
        return None
    if ctx.expected_gpus is not None:
        return ctx.expected_gpus
    try:
        return len(node_gpus(facts))
    except NotApplicable:
        return None


def _shm_fix(size_bytes: int) -> str:
    gib = max(1, math.ceil(size_bytes / 1024**3))
    return (f"docker run --shm-size={gib}g ... (or --ipc=host); on a host: "
            f"sudo mount -o remount,size={gib}G /dev/shm")


# ---------------------------------------------------------------------------------------------- shm


@node_check("shm-too-small", Severity.ERROR, tags=("system", "shm", "nccl"),
            why="NCCL's shared-memory transport and DataLoader workers live in /dev/shm; Docker's 64 MB "
                "default kills jobs with 'exits with return code = -7' (SIGBUS); ds_report warns below "
                "512 MB.",
            fix="docker run --shm-size=16g ... (or --ipc=host); on a host: sudo mount -o remount,size=16G "
                "/dev/shm")
def check_shm_min(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """/dev/shm is at least the minimum size."""
    system = require(facts.system, "system facts")
    shm = require(system.shm, "/dev/shm")
    total = require(shm.total_bytes, "/dev/shm size")
    minimum = ctx.thresholds.shm_min_bytes
    if total < minimum:
        wanted = max(minimum, (_local_ranks(facts, ctx) or 1) * ctx.thresholds.shm_per_gpu_bytes)
        yield Problem(f"/dev/shm is {human_bytes(total)}, below the minimum {human_bytes(minimum)}",
                      where=shm.path, fix=_shm_fix(wanted))


@node_check("shm-full", Severity.ERROR, tags=("system", "shm", "nccl"),
            why="A /dev/shm filled by files a crashed job left behind fails the next job's NCCL setup and "
                "DataLoader workers with SIGBUS or 'No space left on device', however large it is.",
            fix="ls -la /dev/shm; remove what no running job holds (leftover nccl-*, torch_*, psm_* files)")
def check_shm_free(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """/dev/shm has the minimum free (a large one filled up by leftovers is as bad as a small one)."""
    system = require(facts.system, "system facts")
    shm = require(system.shm, "/dev/shm")
    total = require(shm.total_bytes, "/dev/shm size")
    free = require(shm.free_bytes, "/dev/shm free space")
    minimum = ctx.thresholds.shm_min_bytes
    if total >= minimum > free:
        yield Problem(f"/dev/shm has {human_bytes(free)} free of {human_bytes(total)}, below the minimum "
                      f"{human_bytes(minimum)}", where=shm.path)


@node_check("shm-below-per-gpu", Severity.WARNING, tags=("system", "shm", "nccl"),
            why="Each local rank needs room in /dev/shm for NCCL buffers and DataLoader batches; too "
                "little fails under load with SIGBUS or 'No space left on device'.",
            fix="docker run --shm-size=<1 GiB per GPU>g ... (or --ipc=host)")
def check_shm_per_gpu(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """/dev/shm has the recommended room per local rank."""
    system = require(facts.system, "system facts")
    shm = require(system.shm, "/dev/shm")
    total = require(shm.total_bytes, "/dev/shm size")
    ranks = _local_ranks(facts, ctx)
    if not ranks:
        raise NotApplicable("no GPU ranks on this node (CPU-only run, or no GPUs and no hostfile)")
    wanted = ranks * ctx.thresholds.shm_per_gpu_bytes
    if ctx.thresholds.shm_min_bytes <= total < wanted:
        yield Problem(f"/dev/shm is {human_bytes(total)}; {ranks} local ranks want {human_bytes(wanted)} "
                      f"({human_bytes(ctx.thresholds.shm_per_gpu_bytes)} each)", where=shm.path,
                      fix=_shm_fix(wanted))


# ------------------------------------------------------------------------------------------- limits

_MEMLOCK_FIX = ("echo '* soft memlock unlimited' | sudo tee -a /etc/security/limits.conf && "
                "echo '* hard memlock unlimited' | sudo tee -a /etc/security/limits.conf   "
                "# then log in again; in Docker: --ulimit memlock=-1")


def _rdma_ports(facts: NodeFacts) -> int:
    network = facts.network
    if not known(network) or not known(network.ib_ports):
        return 0
    return len(network.ib_ports)


def _memlock_text(limit: ResourceLimit) -> str:
    return "unlimited" if limit.soft is None else human_bytes(limit.soft)


@node_check("ulimit-memlock-ib", Severity.ERROR, tags=("system", "ulimit", "rdma"),
            why="RDMA (InfiniBand/RoCE) registers pinned memory; with a memlock limit NCCL fails to "
                "register buffers ('ibv_reg_mr failed') or falls back to slow sockets.",
            fix=_MEMLOCK_FIX)
def check_memlock_ib(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """memlock is unlimited on a node with RDMA ports."""
    ports = _rdma_ports(facts)
    if not ports:
        raise NotApplicable("no RDMA ports on this node")
    limit = find_limit(facts, "memlock")
    if limit.soft is not None:
        yield Problem(f"max locked memory is {_memlock_text(limit)} on a node with {ports} RDMA port(s); "
                      "RDMA needs unlimited", where="ulimit -l")


@node_check("ulimit-memlock-low", Severity.WARNING, tags=("system", "ulimit"),
            why="A memlock limit gets in the way of pinned memory for GPUDirect, RDMA added later, and "
                "some CPU-offload paths; NCCL's documentation asks for unlimited.",
            fix=_MEMLOCK_FIX)
def check_memlock(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """memlock is unlimited (nodes without RDMA ports)."""
    if _rdma_ports(facts):
        raise NotApplicable("RDMA ports present: ulimit-memlock-ib judges memlock")
    limit = find_limit(facts, "memlock")
    if limit.soft is not None:
        yield Problem(f"max locked memory is {_memlock_text(limit)}, not unlimited", where="ulimit -l")


@node_check("ulimit-nofile-low", Severity.WARNING, tags=("system", "ulimit"),
            why="Each rank opens sockets to every peer plus DataLoader files and shared-memory handles; "
                "a low open-files limit ends in 'Too many open files' at scale.",
            fix="echo '* soft nofile 1048576' | sudo tee -a /etc/security/limits.conf && "
                "echo '* hard nofile 1048576' | sudo tee -a /etc/security/limits.conf   # then log in again")
def check_nofile(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """The open-files limit is high enough."""
    limit = find_limit(facts, "nofile")
    minimum = ctx.thresholds.nofile_min
    if limit.soft is not None and limit.soft < minimum:
        hard = "unlimited" if limit.hard is None else str(limit.hard)
        fix = None
        if limit.hard is None or limit.hard >= minimum:
            fix = (f"ulimit -n {minimum} in the shell, or raise 'soft nofile' in "
                   f"/etc/security/limits.conf (hard limit {hard} already allows it)")
        yield Problem(f"open files limit is {limit.soft} (hard {hard}), below {minimum}", where="ulimit -n",
                      fix=fix)


# -------------------------------------------------------------------------------------------- disks


@node_check("disk-space-low", Severity.WARNING, tags=("system", "disk"),
            why="Checkpoints, JIT-built ops and logs fail to write on a full disk, often hours into a run.",
            fix="free space (old checkpoints, ~/.cache) or point the job's output at a bigger disk")
def check_disk_space(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """Disks the job writes to have free space."""
    system = require(facts.system, "system facts")
    minimum = ctx.thresholds.disk_free_min_bytes
    seen: set[str] = set()
    judged = 0
    for disk in system.disks:
        if disk.purpose == "shm" or not known(disk.free_bytes):
            continue
        judged += 1
        mount = disk.mount_point if known(disk.mount_point) else disk.path
        if mount in seen:
            continue
        seen.add(mount)
        if disk.free_bytes < minimum:
            yield Problem(f"only {human_bytes(disk.free_bytes)} free on {mount} ({disk.purpose}: "
                          f"{disk.path}), below {human_bytes(minimum)}", where=mount,
                          fix=f"du -xsh {mount}/* | sort -h | tail   # find what to delete")
    if not judged:
        raise NotApplicable("no disk with a readable free space")


@node_check("disk-cache-on-network-fs", Severity.WARNING, tags=("system", "disk", "jit"),
            why="torch_extensions and Triton caches on NFS/Lustre/GPFS are shared by all nodes: JIT "
                "builds contend for the same lock files and hang, or hang at exit.",
            fix="put the caches on local disk via ~/.deepspeed_env: "
                "TORCH_EXTENSIONS_DIR=/tmp/torch_extensions and TRITON_CACHE_DIR=/tmp/triton")
def check_cache_fs(facts: NodeFacts, ctx: NodeContext) -> Iterator[Problem]:
    """JIT caches (torch_extensions, Triton) are on a local filesystem."""
    system = require(facts.system, "system facts")
    caches = [disk for disk in system.disks if disk.purpose in CACHE_PURPOSES]
    if not caches:
        raise NotApplicable("no JIT cache directory among the disk facts")
    for disk in caches:
        fstype = disk.fstype if known(disk.fstype) else ""
        if fstype.lower() in NETWORK_FILESYSTEMS:
            variable = CACHE_PURPOSES[disk.purpose]
            local = "/tmp/torch_extensions" if variable == "TORCH_EXTENSIONS_DIR" else "/tmp/triton"
            yield Problem(f"{disk.purpose} cache {disk.path} is on {fstype}, shared by every node",
                          where=disk.path, fix=f"echo '{variable}={local}' >> ~/.deepspeed_env")
