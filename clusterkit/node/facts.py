"""Plain, typed, timestamped facts about a node.

Collectors fill these dataclasses and nothing else; checks read them and nothing else. A fact that
could not be read is an ``Unavailable`` carrying the reason, never a missing key or ``None``.

This module ships to cluster nodes inside the agent, so it is stdlib-only and keeps to Python 3.8
syntax (annotations are strings thanks to ``from __future__ import annotations``).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, Union

if TYPE_CHECKING:
    from typing_extensions import TypeIs

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Unavailable:
    """A fact that could not be read, with the reason (``NVML not found``, ``timed out after 5s``)."""

    reason: str

    def __str__(self) -> str:
        return "unavailable: " + self.reason


T = TypeVar("T")
#: A value, or the reason it could not be read.
Maybe = Union[T, Unavailable]


def known(value: Maybe[T]) -> TypeIs[T]:
    """True when ``value`` was read (is not ``Unavailable``)."""
    return not isinstance(value, Unavailable)


# --------------------------------------------------------------------------------------------- host


@dataclass
class HostFacts:
    """Identity of the node and the clock reading used for skew checks."""

    hostname: str
    fqdn: str
    kernel: str
    arch: str
    os_name: Maybe[str]
    agent_python: str
    clock_unix: float
    uptime_s: Maybe[float]


@dataclass
class NumaNodeFacts:
    node_id: int
    cpulist: str
    mem_total_bytes: Maybe[int]


@dataclass
class ResourceLimit:
    """One ``ulimit``; ``None`` means unlimited."""

    name: str
    soft: int | None
    hard: int | None


@dataclass
class DiskFacts:
    """Capacity of the filesystem holding ``path``; ``purpose`` says why we looked (``shm``, ``home``...)."""

    purpose: str
    path: str
    mount_point: Maybe[str]
    fstype: Maybe[str]
    total_bytes: Maybe[int]
    free_bytes: Maybe[int]


@dataclass
class SystemFacts:
    cpu_model: Maybe[str]
    logical_cpus: Maybe[int]
    numa_nodes: Maybe[list[NumaNodeFacts]]
    mem_total_bytes: Maybe[int]
    mem_available_bytes: Maybe[int]
    swap_total_bytes: Maybe[int]
    shm: Maybe[DiskFacts]
    limits: Maybe[list[ResourceLimit]]
    disks: list[DiskFacts] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- GPU


@dataclass
class EccFacts:
    mode_enabled: Maybe[bool]
    volatile_corrected: Maybe[int]
    volatile_uncorrected: Maybe[int]
    aggregate_corrected: Maybe[int]
    aggregate_uncorrected: Maybe[int]


@dataclass
class RetiredPagesFacts:
    """Page retirement (pre-Ampere). Ampere and later report ``Unavailable`` here and use row remapping."""

    single_bit: Maybe[int]
    double_bit: Maybe[int]
    pending: Maybe[bool]


@dataclass
class RemappedRowsFacts:
    """Row remapping (Ampere and later)."""

    correctable: Maybe[int]
    uncorrectable: Maybe[int]
    pending: Maybe[bool]
    failure: Maybe[bool]


@dataclass
class NvLinkFacts:
    link: int
    active: bool
    version: Maybe[int]
    remote_bus_id: Maybe[str]
    crc_errors: Maybe[int]
    replay_errors: Maybe[int]
    recovery_errors: Maybe[int]


@dataclass
class GpuFacts:
    """One GPU as NVML sees it. Clock-event reasons use NVML's names without prefix (``hw_slowdown``)."""

    index: int
    name: str
    uuid: str
    bus_id: str
    compute_capability: Maybe[str]
    memory_total_bytes: Maybe[int]
    memory_used_bytes: Maybe[int]
    utilization_gpu_pct: Maybe[int]
    utilization_memory_pct: Maybe[int]
    temperature_c: Maybe[int]
    power_draw_w: Maybe[float]
    power_limit_w: Maybe[float]
    sm_clock_mhz: Maybe[int]
    sm_clock_max_mhz: Maybe[int]
    mem_clock_mhz: Maybe[int]
    mem_clock_max_mhz: Maybe[int]
    clock_event_reasons: Maybe[list[str]]
    performance_state: Maybe[int]
    persistence_mode: Maybe[bool]
    compute_mode: Maybe[str]
    mig_enabled: Maybe[bool]
    pcie_gen_current: Maybe[int]
    pcie_gen_max: Maybe[int]
    pcie_width_current: Maybe[int]
    pcie_width_max: Maybe[int]
    pcie_replay_count: Maybe[int]
    ecc: EccFacts
    retired_pages: RetiredPagesFacts
    remapped_rows: RemappedRowsFacts
    nvlinks: Maybe[list[NvLinkFacts]]
    numa_node: Maybe[int]
    compute_processes: Maybe[int]


@dataclass
class TopologyFacts:
    """``nvidia-smi topo -m`` and ``topo -p2p r|w|n``. Matrices are indexed like ``devices``."""

    devices: list[str]
    matrix: list[list[str]]
    cpu_affinity: dict[str, str]
    numa_affinity: dict[str, str]
    nic_names: dict[str, str]
    p2p_read: Maybe[list[list[str]]]
    p2p_write: Maybe[list[list[str]]]
    p2p_nvlink: Maybe[list[list[str]]]


@dataclass
class XidEvent:
    """One ``NVRM: Xid`` line from the kernel log."""

    bus_id: str
    code: int
    message: str
    raw: str


@dataclass
class NvidiaFacts:
    """Driver, GPUs, topology and XID events. ``gpus`` is ``Unavailable`` when NVML cannot be used."""

    driver_version: Maybe[str]
    cuda_driver_version: Maybe[str]
    kernel_module: Maybe[str]
    gpus: Maybe[list[GpuFacts]]
    topology: Maybe[TopologyFacts]
    xid_events: Maybe[list[XidEvent]]
    device_files: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ network


@dataclass
class NicFacts:
    """A network interface from sysfs. ``kind``: loopback, physical, bridge, virtual, ipoib."""

    name: str
    kind: str
    operstate: str
    mtu: Maybe[int]
    speed_mbps: Maybe[int]
    ipv4: list[str]
    ipv6: list[str]
    numa_node: Maybe[int]


@dataclass
class IbPortFacts:
    """An RDMA port from ``/sys/class/infiniband``. ``state`` is e.g. ``ACTIVE``, ``DOWN``."""

    device: str
    port: int
    state: str
    phys_state: str
    rate: str
    rate_gbps: Maybe[float]
    link_layer: str
    netdevs: list[str]
    numa_node: Maybe[int]

    @property
    def active(self) -> bool:
        """Carries traffic: ACTIVE with the physical link up (sysfs says ``4: ACTIVE``, ``5: LinkUp``;
        collectors may keep or drop the number)."""
        return "ACTIVE" in self.state.upper() and "LINKUP" in self.phys_state.upper().replace(" ", "")


@dataclass
class NetworkFacts:
    nics: Maybe[list[NicFacts]]
    ib_ports: Maybe[list[IbPortFacts]]
    #: Where the NICs' ipv4/ipv6 lists came from (``ip -j addr``, or the /proc fallback), or why they
    #: could not be read at all: then empty lists mean "unknown", not "no address".
    addresses_source: Maybe[str] = Unavailable("not recorded")


# --------------------------------------------------------------------------------------------- CUDA


@dataclass
class SharedLibFacts:
    """A shared library the dynamic loader can resolve. ``source``: ``ldconfig`` or ``LD_LIBRARY_PATH``."""

    soname: str
    path: str
    source: str


@dataclass
class CudaFacts:
    libraries: Maybe[list[SharedLibFacts]]
    nvcc_path: Maybe[str]
    nvcc_version: Maybe[str]
    cuda_home: Maybe[str]


# ------------------------------------------------------------------------------------ Python / DS


@dataclass
class DsOpFacts:
    """One DeepSpeed op as ``ds_report`` lists it, with the warnings that explain an incompatibility."""

    name: str
    installed: bool
    compatible: bool
    warnings: list[str]


@dataclass
class PythonEnvFacts:
    """The training interpreter: the one DeepSpeed's launcher will run on this node.

    ``torch_cuda`` is ``None`` for a CPU build of torch; ``Unavailable`` when torch cannot be imported.
    """

    interpreter: str
    exists: bool
    version: Maybe[str]
    prefix: Maybe[str]
    env_hash: Maybe[str]
    torch_version: Maybe[str]
    torch_cuda: Maybe[str | None]
    torch_cuda_available: Maybe[bool]
    torch_device_count: Maybe[int]
    torch_arch_list: Maybe[list[str]]
    nccl_version: Maybe[str]
    cpp_ext_cuda_home: Maybe[str | None]
    deepspeed_version: Maybe[str]
    deepspeed_ops: Maybe[list[DsOpFacts]]
    ninja_path: Maybe[str]
    #: ds_report's "general environment info" lines by name ("nvcc version",
    #: "deepspeed wheel compiled w.", "shared memory (/dev/shm) size"; section warnings under "warnings").
    deepspeed_info: Maybe[dict[str, str]] = field(default_factory=dict)
    #: When the probe ran (unix time); older than this run's start means it came from the probe cache.
    probed_at: float = 0.0


# -------------------------------------------------------------------------------- SSH and launcher


@dataclass
class TextFileFacts:
    """A small text file read verbatim (``.deepspeed_env``); ``lines`` keep their order and content."""

    path: str
    exists: bool
    lines: Maybe[list[str]]
    mode: Maybe[int]


@dataclass
class SshTrustFacts:
    """SSH trust as this node's files state it; keys are OpenSSH ``SHA256:`` fingerprints."""

    #: This user's own keys (~/.ssh/id_*.pub): what it offers when it logs in elsewhere.
    user_keys: Maybe[list[str]]
    #: Keys that may log in here as this user (~/.ssh/authorized_keys).
    authorized_keys: Maybe[list[str]]
    #: This node's sshd host keys: what others must have in their known_hosts.
    host_keys: Maybe[list[str]]
    #: Peer name (as in the hostfile) -> host keys known_hosts accepts for it.
    known_hosts: Maybe[dict[str, list[str]]]


@dataclass
class LauncherFacts:
    """What DeepSpeed's pdsh launcher needs on this node, as a non-interactive shell sees it."""

    pdsh_path: Maybe[str]
    pdsh_rcmd_modules: Maybe[list[str]]
    pdsh_default_rcmd: Maybe[str]
    ssh_path: Maybe[str]
    rsync_path: Maybe[str]
    sshd_listening_ports: Maybe[list[int]]
    ssh_dir_mode: Maybe[int]
    authorized_keys_mode: Maybe[int]
    deepspeed_env_files: list[TextFileFacts]
    cwd: str
    #: Whether ``cwd`` exists here: DeepSpeed's pdsh launcher runs ``cd <launch dir>`` on every node.
    cwd_exists: Maybe[bool] = Unavailable("not collected")
    #: The training script as the launch names it (relative to ``cwd``), when a launch is being checked.
    script: Maybe[str] = Unavailable("no training script named")
    #: Whether that script is a file here: every node's launcher runs ``<python> ... <script>`` from ``cwd``.
    script_exists: Maybe[bool] = Unavailable("no training script named")
    ssh_trust: Maybe[SshTrustFacts] = Unavailable("not collected")


# ---------------------------------------------------------------------------------------------- node


@dataclass
class NodeFacts:
    """Everything one collection pass learnt about a node. Each section may be ``Unavailable``."""

    schema_version: int
    host: HostFacts
    collected_at: float
    system: Maybe[SystemFacts]
    nvidia: Maybe[NvidiaFacts]
    network: Maybe[NetworkFacts]
    cuda: Maybe[CudaFacts]
    python_env: Maybe[PythonEnvFacts]
    launcher: Maybe[LauncherFacts]
    env_vars: dict[str, str]
    timings_s: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------- cross-node probes


@dataclass
class SshLoginProbe:
    """One live login from a node (``ssh -o BatchMode=yes HOST true``): did it work, what ssh said."""

    host: str
    ok: bool
    #: ssh's last line of stderr (or why it could not run) when the login failed; "" when it worked.
    error: str = ""
    exit_code: int | None = None
    seconds: float = 0.0


@dataclass
class PortHoldProbe:
    """The master port held open on the first host: was it free, and who connected to it."""

    port: int
    free: bool
    error: str = ""
    accepted: list[str] = field(default_factory=list)


@dataclass
class ConnectProbe:
    """A TCP connection from a node to the master address and port."""

    ok: bool
    error: str = ""
    seconds: float = 0.0


@dataclass
class CollectReply:
    """What ``agent collect`` sends back: the node's facts and the probes it ran beside them."""

    facts: NodeFacts
    ssh: list[SshLoginProbe] | None = None
    listen: PortHoldProbe | None = None
    connect: ConnectProbe | None = None


# -------------------------------------------------------------------------------------------- Slurm


@dataclass
class SlurmNodeFacts:
    """One node as slurmctld sees it (``scontrol show node``), with the reason an admin gave (``sinfo -R``)."""

    name: str
    #: scontrol's state words: ``IDLE``, ``MIXED+DRAIN``, ``DOWN+NOT_RESPONDING``...
    state: str
    reason: str = ""
    #: Who set the reason and when, as ``sinfo -R`` prints them ("" when unknown).
    reason_user: str = ""
    reason_time: str = ""
    address: str = ""
    cpus: Maybe[int] = Unavailable("not reported")
    #: GPUs in the node's configured gres (``Gres=gpu:a100:8``); 0 when it has none.
    gpus: Maybe[int] = Unavailable("not reported")
    partitions: list[str] = field(default_factory=list)


@dataclass
class SlurmJobFacts:
    """The allocation clusterkit runs in (``scontrol show job -d``)."""

    job_id: str
    partition: str
    nodes: list[str]
    #: None: no limit.
    time_limit_s: int | None
    #: Time limit minus run time, when both are known.
    time_left_s: int | None
    #: ``--cpus-per-task`` of the allocation (None for Slurm's default of one).
    cpus_per_task: int | None
    #: node -> GPUs the job holds there (its per-node GRES); absent when it holds none.
    gpus_per_node: dict[str, int] = field(default_factory=dict)
    #: node -> CPUs the job holds there.
    cpus_per_node: dict[str, int] = field(default_factory=dict)
    #: Tasks per node the allocation asked for (``--ntasks-per-node``), None when not given.
    tasks_per_node: int | None = None


@dataclass
class SlurmLaunchIntent:
    """What a launch under Slurm will ask for, for the checks that weigh it against the allocation."""

    #: ``srun`` (clusterkit's line: one task per node running DeepSpeed's launch.py) or ``slurm``
    #: (DeepSpeed's own Slurm launcher: ``srun -n WORLD python script``).
    launcher: str
    ranks_per_node: int
    #: CPUs each node's task gets (``srun --cpus-per-task``); None: Slurm's default of one.
    cpus_per_node_task: int | None
    #: DataLoader worker processes per rank, when the training command says (``--dataloader_num_workers``).
    dataloader_workers: int | None = None
    #: Seconds between checkpoints when the command says, and where it says it.
    checkpoint_interval_s: float | None = None
    checkpoint_source: str = ""
    #: The training command saves no checkpoint at all (``--save_strategy no``).
    no_checkpoints: bool = False


@dataclass
class SlurmHealthCheckFacts:
    """Slurm's node hooks (``scontrol show config``) and, on each node of the job, the clusterkit version
    its HealthCheckProgram runs (``clusterkit nodecheck``), or why none."""

    program: str
    interval_s: int | None
    prolog: str
    epilog: str
    #: node -> the version its health check script reports, or why there is none.
    versions: dict[str, Maybe[str]] = field(default_factory=dict)


@dataclass
class SlurmFacts:
    """Slurm's view of the run, read on the head: the job, its nodes (and the partition's), the version."""

    version: Maybe[str]
    job: Maybe[SlurmJobFacts]
    #: The job's nodes and every other node of its partition(s), in slurmctld's order.
    nodes: Maybe[list[SlurmNodeFacts]]
    launch: SlurmLaunchIntent | None = None
    health_check: Maybe[SlurmHealthCheckFacts] = Unavailable("not read")


# ------------------------------------------------------------------------------------------ cluster


@dataclass
class MasterProbe:
    """Rank 0's rendezvous address as DeepSpeed picks it, and whether every node reaches it."""

    host: str
    #: First word of ``hostname -I`` on the first host: what DeepSpeed uses without --master_addr.
    address: Maybe[str]
    all_addresses: list[str]
    port: int
    port_free: Maybe[bool]
    #: host -> its connection to address:port (Unavailable: not tested, and why).
    reachable_from: dict[str, Maybe[ConnectProbe]]


@dataclass
class ClusterProbes:
    """Cross-node measurements taken from the head; each part may be Unavailable."""

    head: str
    #: host -> node clock minus head clock, in seconds (RTT-corrected).
    clock_offset_s: dict[str, Maybe[float]]
    #: source host -> its live logins into other nodes (``--mesh ring|full``).
    ssh_mesh: dict[str, Maybe[list[SshLoginProbe]]]
    master: Maybe[MasterProbe]
    #: host -> fix command for hosts whose facts could not be collected.
    unreachable_fixes: dict[str, str] = field(default_factory=dict)
    #: Which live logins ``ssh_mesh`` holds: "static" (none), "ring" (each node to the next), "full".
    mesh_mode: str = "static"
    #: Whether ``head`` (the launching machine, this one) is a hostfile entry; False for a login node.
    head_in_hostfile: bool = True
    #: The only active host is this machine: DeepSpeed starts ranks here, with no SSH and no pdsh.
    local_only: bool = False
    #: The launching machine as the launcher itself sees it (read in-process, not over SSH): its pdsh,
    #: its .deepspeed_env files and the NCCL_* variables DeepSpeed exports from its environment.
    launch_facts: Maybe[NodeFacts] = Unavailable("not collected")
    #: How the head reached the nodes: ``ssh`` (one session per node) or ``slurm`` (one srun step).
    transport: str = "ssh"
    #: Slurm's own view (job, node states and reasons) when the nodes came from a Slurm allocation.
    slurm: Maybe[SlurmFacts] = Unavailable("not run through Slurm")


# --------------------------------------------------------------------------------------------- codec


def to_jsonable(value: Any) -> Any:
    """Turn facts into JSON-ready data. ``Unavailable`` becomes ``{"unavailable": reason}``."""
    if isinstance(value, Unavailable):
        return {"unavailable": value.reason}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value
