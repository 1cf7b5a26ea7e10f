"""Builders of realistic NodeFacts for tests, and a table format for check tests.

Values follow the real H100 readings in tests/fixtures/h100-x1 (driver 580.159.04, CUDA 13.0, torch
2.11.0+cu130, DeepSpeed 0.19.8, Gen5 x16, 85520809984 bytes of memory); an 8-GPU node is an HGX
H100 (NVLink 4 x18 per GPU, 8 NDR InfiniBand ports). Every builder takes keyword overrides, and a
"healthy" node passes every node check at error and warning severity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from clusterkit.checks import load_checks
from clusterkit.checks.registry import REGISTRY, NodeContext, run_node_checks
from clusterkit.core.findings import Finding, Outcome, Severity
from clusterkit.node.facts import (
    CudaFacts,
    DiskFacts,
    DsOpFacts,
    EccFacts,
    GpuFacts,
    HostFacts,
    IbPortFacts,
    LauncherFacts,
    NetworkFacts,
    NicFacts,
    NodeFacts,
    NumaNodeFacts,
    NvidiaFacts,
    NvLinkFacts,
    PythonEnvFacts,
    RemappedRowsFacts,
    ResourceLimit,
    RetiredPagesFacts,
    SharedLibFacts,
    SystemFacts,
    TextFileFacts,
    TopologyFacts,
    Unavailable,
    XidEvent,
)

T = TypeVar("T")

NOT_SUPPORTED = Unavailable("NVMLError_NotSupported: Not Supported")
H100_NAME = "NVIDIA H100 80GB HBM3"
H100_MEMORY = 85520809984
DRIVER = "580.159.04"
DRIVER_CUDA = "13.0"
INTERPRETER = "/opt/venv/bin/python"
#: PCI addresses of the 8 GPUs of an HGX H100 board, NVML's form.
HGX_BUS_IDS = ("00000000:18:00.0", "00000000:2A:00.0", "00000000:3A:00.0", "00000000:5D:00.0",
               "00000000:9A:00.0", "00000000:AB:00.0", "00000000:BA:00.0", "00000000:DB:00.0")
H100_X1_BUS_ID = "00000000:00:06.0"
GIB = 1024**3


def build(cls: type[T], **values: Any) -> T:
    """``cls(**values)``; a required field the test does not care about becomes ``Unavailable``.

    Keeps the factories working when the facts contract grows a field.
    """
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if (f.name not in values and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING):
            values[f.name] = Unavailable("not set by the test factory")
    return cls(**values)


def _with(obj: T, changes: dict[str, Any]) -> T:
    return dataclasses.replace(obj, **changes) if changes else obj  # type: ignore[type-var]


# --------------------------------------------------------------------------------------------- GPU


def make_nvlinks(count: int = 18, **changes: Any) -> list[NvLinkFacts]:
    """NVLink 4 links to the NVSwitches, all active and error-free."""
    return [_with(NvLinkFacts(link=i, active=True, version=4, remote_bus_id=f"00000000:{0x05 + i % 4:02X}:00.0",
                              crc_errors=0, replay_errors=0, recovery_errors=0), changes)
            for i in range(count)]


def make_gpu(index: int = 0, *, nvlink: bool = False, **changes: Any) -> GpuFacts:
    """A healthy, idle H100 as NVML reads it (values of tests/fixtures/h100-x1/nvml-readings.json)."""
    bus_id = HGX_BUS_IDS[index % len(HGX_BUS_IDS)] if nvlink else (
        H100_X1_BUS_ID if index == 0 else f"00000000:{0x10 + index:02X}:00.0")
    gpu = GpuFacts(
        index=index, name=H100_NAME, uuid=f"GPU-944ba4d1-ba97-eb4c-5067-8840a9b23f{index:02x}",
        bus_id=bus_id, compute_capability="9.0", memory_total_bytes=H100_MEMORY,
        memory_used_bytes=503316480, utilization_gpu_pct=0, utilization_memory_pct=0, temperature_c=47,
        power_draw_w=75.259, power_limit_w=700.0, sm_clock_mhz=345, sm_clock_max_mhz=1980,
        mem_clock_mhz=2619, mem_clock_max_mhz=2619, clock_event_reasons=["gpu_idle"], performance_state=0,
        persistence_mode=True, compute_mode="default", mig_enabled=False, pcie_gen_current=5,
        pcie_gen_max=5, pcie_width_current=16, pcie_width_max=16, pcie_replay_count=0,
        ecc=EccFacts(mode_enabled=True, volatile_corrected=0, volatile_uncorrected=0, aggregate_corrected=0,
                     aggregate_uncorrected=0),
        retired_pages=RetiredPagesFacts(single_bit=NOT_SUPPORTED, double_bit=NOT_SUPPORTED,
                                        pending=NOT_SUPPORTED),
        remapped_rows=RemappedRowsFacts(correctable=0, uncorrectable=0, pending=False, failure=False),
        nvlinks=make_nvlinks() if nvlink else NOT_SUPPORTED,
        numa_node=(0 if index < 4 else 1) if nvlink else NOT_SUPPORTED,
        compute_processes=0,
    )
    return _with(gpu, changes)


def make_topology(gpus: int, nvlink: bool) -> TopologyFacts:
    """``nvidia-smi topo -m`` / ``-p2p r`` for ``gpus`` GPUs: NV18 between all of them, or one GPU."""
    names = [f"GPU{i}" for i in range(gpus)]
    link = "NV18" if nvlink else "SYS"
    matrix = [["X" if i == j else link for j in range(gpus)] for i in range(gpus)]
    p2p = [["X" if i == j else "OK" for j in range(gpus)] for i in range(gpus)]
    half = max(1, gpus // 2)
    return TopologyFacts(
        devices=names, matrix=matrix,
        cpu_affinity={n: ("0-47,96-143" if i < half else "48-95,144-191") if gpus > 1 else "0-15"
                      for i, n in enumerate(names)},
        numa_affinity={n: ("0" if i < half else "1") for i, n in enumerate(names)},
        nic_names={}, p2p_read=p2p, p2p_write=[row[:] for row in p2p], p2p_nvlink=(
            [row[:] for row in p2p] if nvlink else [["X" if i == j else "NS" for j in range(gpus)]
                                                   for i in range(gpus)]))


def make_nvidia(count: int = 8, *, nvlink: bool | None = None, gpu_list: list[GpuFacts] | None = None,
                **changes: Any) -> NvidiaFacts:
    """Driver, ``count`` GPUs and topology of a healthy node (NVLink when it has more than one GPU)."""
    linked = count > 1 if nvlink is None else nvlink
    listed = gpu_list if gpu_list is not None else [make_gpu(i, nvlink=linked) for i in range(count)]
    nvidia = NvidiaFacts(
        driver_version=DRIVER, cuda_driver_version=DRIVER_CUDA,
        kernel_module=f"NVIDIA UNIX Open Kernel Module for x86_64  {DRIVER}  Release Build",
        gpus=listed, topology=make_topology(len(listed), linked), xid_events=[],
        device_files=[*(f"/dev/nvidia{i}" for i in range(len(listed))), "/dev/nvidia-uvm",
                      "/dev/nvidia-uvm-tools", "/dev/nvidiactl"],
    )
    return _with(nvidia, changes)


def xid(code: int, bus_id: str = HGX_BUS_IDS[0], message: str = "") -> XidEvent:
    """An ``NVRM: Xid`` line as the kernel prints it (bus id in the kernel's short form)."""
    short = bus_id[4:].lower().rsplit(".", 1)[0]
    raw = f"[ 1234.567890] NVRM: Xid (PCI:{short}): {code}, pid=4242, name=python, {message}"
    return XidEvent(bus_id=bus_id, code=code, message=message, raw=raw)


# ------------------------------------------------------------------------------------------ system


def make_system(gpus: int = 8, **changes: Any) -> SystemFacts:
    """A dual-socket HGX host (or the 16-CPU H100 VM with one GPU), healthy limits and disks."""
    big = gpus > 1
    cpus = 192 if big else 16
    mem = 2 * 1024**4 if big else 235 * GIB
    shm = DiskFacts(purpose="shm", path="/dev/shm", mount_point="/dev/shm", fstype="tmpfs",
                    total_bytes=mem // 2 if big else 128 * GIB, free_bytes=mem // 2 if big else 128 * GIB)

    def disk(purpose: str, path: str, mount: str = "/", fstype: str = "ext4") -> DiskFacts:
        return DiskFacts(purpose=purpose, path=path, mount_point=mount, fstype=fstype,
                         total_bytes=3500 * GIB, free_bytes=2100 * GIB)

    system = SystemFacts(
        cpu_model="AMD EPYC 9654 96-Core Processor" if big else "Intel(R) Xeon(R) Platinum 8480+",
        logical_cpus=cpus,
        numa_nodes=[NumaNodeFacts(0, "0-47,96-143", mem // 2), NumaNodeFacts(1, "48-95,144-191", mem // 2)]
        if big else [NumaNodeFacts(0, "0-15", mem)],
        mem_total_bytes=mem, mem_available_bytes=mem - 40 * GIB, swap_total_bytes=0, shm=shm,
        limits=[ResourceLimit("memlock", None, None), ResourceLimit("nofile", 1048576, 1048576),
                ResourceLimit("nproc", 515506, 515506), ResourceLimit("stack", 8388608, None)],
        disks=[disk("root", "/"), disk("home", "/root"), disk("tmp", "/tmp"), disk("cwd", "/work"),
               disk("torch_extensions", "/root/.cache/torch_extensions"),
               disk("triton_cache", "/root/.triton/cache")],
    )
    return _with(system, changes)


def limit(name: str, soft: int | None, hard: int | None = None) -> list[ResourceLimit]:
    """The healthy limit list with one limit replaced."""
    limits = [lim for lim in make_system().limits if lim.name != name]  # type: ignore[union-attr]
    return [ResourceLimit(name, soft, hard if hard is not None else soft), *limits]


# ----------------------------------------------------------------------------------------- network


def make_ib_port(index: int = 0, **changes: Any) -> IbPortFacts:
    """One NDR InfiniBand port, ACTIVE and LinkUp."""
    port = IbPortFacts(device=f"mlx5_{index}", port=1, state="ACTIVE", phys_state="LinkUp",
                       rate="400 Gb/sec (4X NDR)", rate_gbps=400.0, link_layer="InfiniBand",
                       netdevs=[f"ibp{index}s0"], numa_node=0 if index < 4 else 1)
    return _with(port, changes)


def make_nic(name: str = "eth0", **changes: Any) -> NicFacts:
    """An interface as sysfs shows it; ``lo`` is the loopback."""
    if name == "lo":
        nic = NicFacts(name="lo", kind="loopback", operstate="unknown", mtu=65536, speed_mbps=NOT_SUPPORTED,
                       ipv4=["127.0.0.1"], ipv6=["::1"], numa_node=Unavailable("no device"))
    else:
        nic = NicFacts(name=name, kind="physical", operstate="up", mtu=1500, speed_mbps=100000,
                       ipv4=["10.0.0.11"], ipv6=[], numa_node=0)
    return _with(nic, changes)


def make_network(ib_ports: int = 8, **changes: Any) -> NetworkFacts:
    """Loopback, one Ethernet interface with an address, and ``ib_ports`` active InfiniBand ports."""
    network = build(NetworkFacts, nics=[make_nic("lo"), make_nic("eth0")],
                    ib_ports=[make_ib_port(i) for i in range(ib_ports)], addresses_source="ip -j addr")
    return _with(network, changes)


# ------------------------------------------------------------------------------------------- CUDA


def make_cuda(**changes: Any) -> CudaFacts:
    """The loader's CUDA libraries of tests/fixtures/h100-x1/ldconfig-p-filtered.txt, nvcc 13.0."""
    target = "/usr/local/cuda/targets/x86_64-linux/lib"
    libraries = [
        SharedLibFacts("libnvidia-ml.so.1", "/usr/local/nvidia/lib64/libnvidia-ml.so.1", "ldconfig"),
        SharedLibFacts("libnccl.so.2", "/lib/x86_64-linux-gnu/libnccl.so.2", "ldconfig"),
        SharedLibFacts("libcudart.so.13", f"{target}/libcudart.so.13", "ldconfig"),
        SharedLibFacts("libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1", "ldconfig"),
        SharedLibFacts("libcublasLt.so.13", f"{target}/libcublasLt.so.13", "ldconfig"),
        SharedLibFacts("libcublas.so.13", f"{target}/libcublas.so.13", "ldconfig"),
    ]
    cuda = CudaFacts(libraries=libraries, nvcc_path="/usr/local/cuda/bin/nvcc", nvcc_version="13.0.88",
                     cuda_home="/usr/local/cuda")
    return _with(cuda, changes)


# ------------------------------------------------------------------------------------ Python env

#: The op table of tests/fixtures/h100-x1/ds_report.txt, with every op compatible.
DS_OP_NAMES = ("async_io", "fused_adam", "cpu_adam", "cpu_adagrad", "cpu_lion", "pin_memory", "dc",
               "evoformer_attn", "fp_quantizer", "fused_lamb", "fused_lion", "gds", "transformer_inference",
               "inference_core_ops", "cutlass_ops", "utils", "transformer", "quantizer", "spatial_inference",
               "ragged_device_ops", "ragged_ops", "random_ltd", "stochastic_transformer")
LIBAIO_WARNINGS = ("{op} requires the dev libaio .so object and headers but these were not found.",
                   "{op}: please install the libaio-dev package with apt",
                   "If libaio is already installed (perhaps from source), try setting the CFLAGS and "
                   "LDFLAGS environment variables to where it can be found.")
CUTLASS_WARNING = ("Unable to locate CUTLASS. Install nvidia-cutlass, clone CUTLASS next to DeepSpeed, "
                   "or set CUTLASS_PATH to the CUTLASS checkout.")


def make_ds_ops(incompatible: Sequence[str] = (), installed: bool = False) -> list[DsOpFacts]:
    """ds_report's ops; those in ``incompatible`` carry the fixture's warnings."""
    ops = []
    for name in DS_OP_NAMES:
        warnings: list[str] = []
        if name in incompatible:
            if name in ("async_io", "gds"):
                warnings = [w.format(op=name) for w in LIBAIO_WARNINGS]
            elif name == "evoformer_attn":
                warnings = [CUTLASS_WARNING]
        ops.append(DsOpFacts(name=name, installed=installed, compatible=name not in incompatible,
                             warnings=warnings))
    return ops


def make_python_env(gpus: int = 8, **changes: Any) -> PythonEnvFacts:
    """The training venv of the H100 machine: torch 2.11.0+cu130, DeepSpeed 0.19.8, ninja on PATH."""
    env = build(
        PythonEnvFacts, interpreter=INTERPRETER, exists=True, version="3.12.3", prefix="/opt/venv",
        env_hash="sha256:5e1f0c7d", torch_version="2.11.0+cu130", torch_cuda="13.0",
        torch_cuda_available=gpus > 0, torch_device_count=gpus,
        torch_arch_list=["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"],
        nccl_version="2.27.7", cpp_ext_cuda_home="/usr/local/cuda", deepspeed_version="0.19.8",
        deepspeed_ops=make_ds_ops(), ninja_path="/opt/venv/bin/ninja",
        deepspeed_info={"torch version": "2.11.0+cu130", "nvcc version": "13.0",
                        "deepspeed wheel compiled w.": "torch 0.0, cuda 0.0",
                        "shared memory (/dev/shm) size": "128.00 GB"},
    )
    return _with(env, changes)


# -------------------------------------------------------------------------------------- launcher

HEALTHY_DEEPSPEED_ENV = ["PATH=/opt/venv/bin:$PATH", "LD_LIBRARY_PATH=/usr/local/cuda/lib64",
                         "CUDA_HOME=/usr/local/cuda", "NCCL_SOCKET_IFNAME=eth0"]


def dsenv_file(lines: Sequence[str] | None, path: str = "/root/.deepspeed_env") -> TextFileFacts:
    """A ``.deepspeed_env`` as the launcher collector reads it (lines without newlines); None = absent."""
    if lines is None:
        return TextFileFacts(path=path, exists=False, lines=Unavailable(f"{path} does not exist"),
                             mode=Unavailable(f"{path} does not exist"))
    return TextFileFacts(path=path, exists=True, lines=list(lines), mode=0o644)


def make_launcher(**changes: Any) -> LauncherFacts:
    """pdsh 2.34 from Debian (default rcmd rsh), sshd on 22, tidy ~/.ssh, a clean ~/.deepspeed_env."""
    launcher = LauncherFacts(
        pdsh_path="/usr/bin/pdsh", pdsh_rcmd_modules=["ssh", "rsh", "exec"], pdsh_default_rcmd="rsh",
        ssh_path="/usr/bin/ssh", rsync_path="/usr/bin/rsync", sshd_listening_ports=[22], ssh_dir_mode=0o700,
        authorized_keys_mode=0o600,
        deepspeed_env_files=[dsenv_file(HEALTHY_DEEPSPEED_ENV), dsenv_file(None, "/work/.deepspeed_env")],
        cwd="/work",
    )
    return _with(launcher, changes)


# ------------------------------------------------------------------------------------------- node

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "USER": "root", "SHELL": "/bin/bash", "NCCL_SOCKET_IFNAME": "eth0"}


def make_host(hostname: str = "gpu-node-0", **changes: Any) -> HostFacts:
    host = HostFacts(hostname=hostname, fqdn=f"{hostname}.cluster.local", kernel="6.8.0-60-generic",
                     arch="x86_64", os_name="Ubuntu 24.04.2 LTS", agent_python="3.12.3",
                     clock_unix=1795420000.0, uptime_s=86400.0)
    return _with(host, changes)


def healthy_gpu_node(gpus: int = 8, *, ib_ports: int | None = None, **changes: Any) -> NodeFacts:
    """A node every node check passes (infos aside). ``changes`` replace NodeFacts fields."""
    ports = (8 if gpus > 1 else 0) if ib_ports is None else ib_ports
    facts = NodeFacts(
        schema_version=1, host=make_host(), collected_at=1795420000.0, system=make_system(gpus),
        nvidia=make_nvidia(gpus), network=make_network(ports), cuda=make_cuda(),
        python_env=make_python_env(gpus), launcher=make_launcher(), env_vars=dict(BASE_ENV),
        timings_s={"system": 0.05, "nvidia": 0.4, "network": 0.02, "cuda": 0.1, "python_env": 2.5,
                   "launcher": 0.03},
    )
    return _with(facts, changes)


def cpu_only_node(**changes: Any) -> NodeFacts:
    """A CPU machine running DeepSpeed on its CPU accelerator (torch CPU build, no NVIDIA driver)."""
    nvml_missing = Unavailable("NVML not found: libnvidia-ml.so.1: cannot open shared object file")
    nvidia = NvidiaFacts(driver_version=nvml_missing, cuda_driver_version=nvml_missing,
                         kernel_module=Unavailable("cannot read /proc/driver/nvidia/version (No such file "
                                                   "or directory): is the nvidia kernel module loaded?"),
                         gpus=nvml_missing, topology=Unavailable("nvidia-smi not found"),
                         xid_events=[], device_files=[])
    python_env = make_python_env(
        0, torch_version="2.13.0+cpu", torch_cuda=None, torch_cuda_available=False, torch_device_count=0,
        torch_arch_list=[], nccl_version=Unavailable("torch was built without NCCL"), cpp_ext_cuda_home=None,
        deepspeed_ops=[DsOpFacts(name, False, True, []) for name in
                       ("deepspeed_not_implemented", "cpu_adam", "cpu_adagrad", "cpu_lion", "fused_adam")])
    cuda = CudaFacts(libraries=[], nvcc_path=Unavailable("nvcc not found on PATH or in CUDA_HOME"),
                     nvcc_version=Unavailable("nvcc not found"), cuda_home=Unavailable("CUDA_HOME not set"))
    system = make_system(1, shm=DiskFacts(purpose="shm", path="/dev/shm", mount_point="/dev/shm",
                                          fstype="tmpfs", total_bytes=4 * GIB, free_bytes=4 * GIB))
    facts = healthy_gpu_node(1, ib_ports=0, nvidia=nvidia, python_env=python_env, cuda=cuda, system=system,
                             host=make_host("cpu-node-0"))
    return _with(facts, changes)


def h100_fixture_node(**changes: Any) -> NodeFacts:
    """The H100 machine of tests/fixtures/h100-x1 as it really was: 3 rows remapped after uncorrectable
    errors, 2 lifetime uncorrectable DRAM ECC errors (1 correctable), open files 20000, and the
    ds_report op table with async_io, gds (no libaio-dev) and evoformer_attn (no CUTLASS) incompatible.
    Sections the fixtures do not cover (launcher, network) are the healthy defaults.
    """
    gpu = make_gpu(0, ecc=EccFacts(mode_enabled=True, volatile_corrected=0, volatile_uncorrected=0,
                                   aggregate_corrected=1, aggregate_uncorrected=2),
                   remapped_rows=RemappedRowsFacts(correctable=0, uncorrectable=3, pending=False, failure=False))
    system = make_system(1, limits=[ResourceLimit("memlock", None, None), ResourceLimit("nofile", 20000, 20000),
                                    ResourceLimit("nproc", 515506, 515506), ResourceLimit("stack", 8388608, None)])
    python_env = make_python_env(1, deepspeed_ops=make_ds_ops(("async_io", "evoformer_attn", "gds")))
    facts = healthy_gpu_node(1, nvidia=make_nvidia(1, gpu_list=[gpu]), system=system, python_env=python_env)
    return _with(facts, changes)


# ------------------------------------------------------------------------------------ edit helpers


def with_gpu(facts: NodeFacts, index: int, **changes: Any) -> NodeFacts:
    """``facts`` with GPU ``index`` changed (other GPUs untouched)."""
    nvidia = facts.nvidia
    assert isinstance(nvidia, NvidiaFacts) and isinstance(nvidia.gpus, list)
    gpus = [dataclasses.replace(g, **changes) if g.index == index else g for g in nvidia.gpus]
    return dataclasses.replace(facts, nvidia=dataclasses.replace(nvidia, gpus=gpus))


def with_all_gpus(facts: NodeFacts, **changes: Any) -> NodeFacts:
    nvidia = facts.nvidia
    assert isinstance(nvidia, NvidiaFacts) and isinstance(nvidia.gpus, list)
    gpus = [dataclasses.replace(g, **changes) for g in nvidia.gpus]
    return dataclasses.replace(facts, nvidia=dataclasses.replace(nvidia, gpus=gpus))


def with_section(facts: NodeFacts, section: str, **changes: Any) -> NodeFacts:
    """``facts`` with fields of one section (``system``, ``python_env``, ``nvidia``...) changed."""
    current = getattr(facts, section)
    return dataclasses.replace(facts, **{section: dataclasses.replace(current, **changes)})


def with_env(facts: NodeFacts, **variables: str | None) -> NodeFacts:
    """``facts`` with environment variables set (None removes one)."""
    env = dict(facts.env_vars)
    for key, value in variables.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return dataclasses.replace(facts, env_vars=env)


# ------------------------------------------------------------------------------------ check tables


@dataclass(frozen=True)
class CheckCase:
    """One row of a check's table: facts, the outcome expected, and text the finding must hold."""

    check_id: str
    outcome: Outcome
    build: Callable[[], NodeFacts]
    name: str
    contains: str = ""
    where: str = ""
    fix_contains: str = ""
    expected_gpus: int | None = None
    count: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: NodeContext fields beyond the host (``is_launch_node``, ``needs_sshd``, ``multi_node``).
    context: dict[str, Any] = field(default_factory=dict)
    #: The severity the findings must have (a problem may lower its check's).
    severity: Severity | None = None

    def __str__(self) -> str:
        return f"{self.check_id}-{self.outcome.value}-{self.name}"


def fail(check_id: str, name: str, build: Callable[[], NodeFacts], contains: str = "", **kw: Any) -> CheckCase:
    return CheckCase(check_id, Outcome.FAIL, build, name, contains, **kw)


def passes(check_id: str, name: str, build: Callable[[], NodeFacts], **kw: Any) -> CheckCase:
    return CheckCase(check_id, Outcome.PASS, build, name, **kw)


def skips(check_id: str, name: str, build: Callable[[], NodeFacts], contains: str = "", **kw: Any) -> CheckCase:
    return CheckCase(check_id, Outcome.SKIP, build, name, contains, **kw)


def run_check(check_id: str, facts: NodeFacts, expected_gpus: int | None = None,
              host: str = "gpu-node-0", **context: Any) -> list[Finding]:
    """Run one registered node check on ``facts`` the way doctor does."""
    load_checks()
    return run_node_checks([REGISTRY[check_id]], facts, NodeContext(host, expected_gpus=expected_gpus, **context))


def assert_case(case: CheckCase) -> list[Finding]:
    """Run the case's check and assert its outcome, text, place and fix."""
    findings = run_check(case.check_id, case.build(), case.expected_gpus, **case.context)
    assert [f.check_id for f in findings] == [case.check_id] * len(findings), findings
    if case.severity is not None:
        assert {f.severity for f in findings} == {case.severity}, findings
    outcomes = {f.outcome for f in findings}
    assert outcomes == {case.outcome}, "\n".join(f"{f.outcome}: {f.message}" for f in findings)
    if case.count is not None:
        assert len(findings) == case.count, [f.message for f in findings]
    if case.contains:
        assert any(case.contains in f.message for f in findings), [f.message for f in findings]
    if case.where:
        assert any(case.where == f.where for f in findings), [f.where for f in findings]
    if case.fix_contains:
        assert any(case.fix_contains in f.fix for f in findings), [f.fix for f in findings]
    return findings


def checks_of_module(module: str) -> list[str]:
    """Ids of the node checks a module (``gpu``, ``system``...) registers."""
    load_checks()
    return [spec.id for spec in REGISTRY.values()
            if spec.scope in ("node", "launch") and spec.func.__module__ == f"clusterkit.checks.{module}"]


def assert_table_covers(module: str, cases: Sequence[CheckCase]) -> None:
    """Every check of ``module`` has at least one failing and one passing row."""
    missing = []
    for check_id in checks_of_module(module):
        outcomes = {case.outcome for case in cases if case.check_id == check_id}
        if not {Outcome.FAIL, Outcome.PASS} <= outcomes:
            missing.append(f"{check_id} (has {sorted(o.value for o in outcomes)})")
    assert not missing, "checks without a failing and a passing case: " + ", ".join(missing)
