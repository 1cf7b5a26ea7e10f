"""The ``nvidia`` section: driver, GPUs (NVML, else ``nvidia-smi -q -x``), topology, XID events.

NVML runs on the calling thread, one call at a time behind ``options.nvml_timeout_s``; the nvidia-smi
topology commands and the kernel-log read run beside it in daemon threads. With
``CLUSTERKIT_NVML_REPLAY`` set (see ``clusterkit.node.collect.nvml_replay``) every input comes from the
recording instead of this machine. Stdlib only (pynvml optional), Python 3.8 syntax: ships inside
the agent.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Callable, Generic, Protocol, TypeVar

from clusterkit.node.collect.nvidia_smi import (
    KernelModule,
    P2pMatrix,
    SmiQuery,
    parse_compute_cap_csv,
    parse_proc_driver_version,
    parse_smi_query_xml,
    parse_topo_matrix,
    parse_topo_p2p,
    run_nvidia_smi,
)
from clusterkit.node.collect.nvml import NvmlApi, PynvmlApi, read_nvml
from clusterkit.node.collect.nvml_replay import REPLAY_ENV, ReplayDirectory, ReplayNvml
from clusterkit.node.collect.options import CollectOptions
from clusterkit.node.collect.xid import parse_xid_events, read_kernel_log
from clusterkit.node.facts import GpuFacts, Maybe, NvidiaFacts, TopologyFacts, Unavailable, XidEvent

T = TypeVar("T")
U = TypeVar("U")

PROC_DRIVER_VERSION = "/proc/driver/nvidia/version"
COMPUTE_CAP_QUERY = ["--query-gpu=pci.bus_id,compute_cap", "--format=csv,noheader"]


class GpuWorld(Protocol):
    """Where the GPU facts come from: this machine, or a recording."""

    def nvml(self) -> NvmlApi: ...
    def nvidia_smi(self, args: list[str], timeout_s: float) -> Maybe[str]: ...
    def proc_driver_version(self) -> Maybe[str]: ...
    def kernel_log(self, timeout_s: float) -> Maybe[str]: ...
    def device_files(self) -> list[str]: ...
    def sysfs_numa_node(self, bus_id: str) -> Maybe[int]: ...


class LiveWorld:
    """This machine: pynvml, the nvidia-smi on PATH, /proc, /sys, /dev and the kernel log."""

    def nvml(self) -> NvmlApi:
        return PynvmlApi()

    def nvidia_smi(self, args: list[str], timeout_s: float) -> Maybe[str]:
        return run_nvidia_smi(args, timeout_s)

    def proc_driver_version(self) -> Maybe[str]:
        try:
            return Path(PROC_DRIVER_VERSION).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return Unavailable(f"cannot read {PROC_DRIVER_VERSION} ({exc.strerror or exc}): "
                               "is the nvidia kernel module loaded?")

    def kernel_log(self, timeout_s: float) -> Maybe[str]:
        return read_kernel_log(timeout_s)

    def device_files(self) -> list[str]:
        try:
            return sorted(str(path) for path in Path("/dev").glob("nvidia*"))
        except OSError:
            return []

    def sysfs_numa_node(self, bus_id: str) -> Maybe[int]:
        # sysfs names devices with an (at least) 4-digit domain in lowercase hex: 0000:3b:00.0
        domain, _, rest = bus_id.partition(":")
        try:
            name = f"{int(domain, 16):04x}:{rest.lower()}"
        except ValueError:
            return Unavailable(f"not a PCI bus id: {bus_id!r}")
        path = Path("/sys/bus/pci/devices") / name / "numa_node"
        try:
            node = int(path.read_text(encoding="ascii").strip())
        except (OSError, ValueError) as exc:
            return Unavailable(f"cannot read {path}: {exc}")
        return node if node >= 0 else Unavailable(f"{path} is {node} (no NUMA affinity reported)")


class ReplayWorld:
    """A recording: NVML readings plus the nvidia-smi, /proc and kernel-log texts beside them."""

    def __init__(self, readings_path: str) -> None:
        self.readings_path = readings_path
        self.directory = ReplayDirectory(readings_path)

    def nvml(self) -> NvmlApi:
        return ReplayNvml(self.readings_path)

    def nvidia_smi(self, args: list[str], timeout_s: float) -> Maybe[str]:
        return self.directory.nvidia_smi(args)

    def proc_driver_version(self) -> Maybe[str]:
        return self.directory.proc_driver_version()

    def kernel_log(self, timeout_s: float) -> Maybe[str]:
        return self.directory.kernel_log()

    def device_files(self) -> list[str]:
        return self.directory.device_files()

    def sysfs_numa_node(self, bus_id: str) -> Maybe[int]:
        return Unavailable("replay: sysfs not recorded")


class _Background(Generic[T]):
    """Run ``func`` in a daemon thread; ``result`` waits at most ``timeout_s`` for it."""

    def __init__(self, what: str, func: Callable[[], Maybe[T]]) -> None:
        self.what = what
        self._func = func
        self._box: dict[str, Maybe[T]] = {}
        self._thread = threading.Thread(target=self._run, name="gpu:" + what, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._box["value"] = self._func()
        except Exception as exc:
            self._box["value"] = Unavailable(f"{self.what} crashed: {type(exc).__name__}: {exc}")

    def result(self, timeout_s: float) -> Maybe[T]:
        self._thread.join(timeout_s)
        if "value" not in self._box:
            return Unavailable(f"{self.what} did not finish within {timeout_s:g}s")
        return self._box["value"]


def smi_timeout_s(options: CollectOptions) -> float:
    """Deadline for one nvidia-smi run: it initialises every GPU when persistence mode is off."""
    return max(3.0 * options.nvml_timeout_s, 10.0)


#: Deadline for each way of reading the kernel log (dmesg, /dev/kmsg, journalctl).
KERNEL_LOG_TIMEOUT_S = 5.0


def world_for_environment() -> GpuWorld:
    """The recording named by ``CLUSTERKIT_NVML_REPLAY``, else this machine."""
    replay = os.environ.get(REPLAY_ENV, "").strip()
    return ReplayWorld(replay) if replay else LiveWorld()


def collect_nvidia(options: CollectOptions, world: GpuWorld | None = None) -> NvidiaFacts:
    """Everything NVIDIA about this node. Never raises; a hung driver costs one NVML deadline.

    Finishes within ``options.section_timeout_s``: what is not done by then is ``Unavailable``.
    """
    world = world or world_for_environment()
    kernel_module = _map(world.proc_driver_version(), parse_proc_driver_version)
    device_files = world.device_files()
    if isinstance(world, LiveWorld) and isinstance(kernel_module, Unavailable) and not device_files:
        # No driver at all: skip NVML, nvidia-smi and the kernel log, which cost CPU and say nothing more.
        none = Unavailable("no NVIDIA driver here: no /proc/driver/nvidia/version and no /dev/nvidia* "
                           "(a CPU-only node, or the nvidia kernel module is not loaded)")
        return NvidiaFacts(driver_version=none, cuda_driver_version=none, kernel_module=kernel_module, gpus=none,
                           topology=none, xid_events=none, device_files=[])
    budget_end = time.monotonic() + max(options.section_timeout_s - 1.0, 1.0)

    def left(wanted_s: float) -> float:
        return max(0.1, min(wanted_s, budget_end - time.monotonic()))

    smi_s = left(smi_timeout_s(options))
    topology_job: _Background[TopologyFacts] = _Background(
        "nvidia-smi topo", lambda: collect_topology(world, smi_s))
    xid_job: _Background[list[XidEvent]] = _Background(
        "kernel log", lambda: _xid_events(world, left(KERNEL_LOG_TIMEOUT_S)))

    reading = read_nvml(world.nvml(), options.nvml_timeout_s, pass_deadline=budget_end)
    driver, cuda, gpus = reading.driver_version, reading.cuda_driver_version, reading.gpus
    if reading.init_failed and reading.hung is None:
        query = _map(world.nvidia_smi(["-q", "-x"], left(smi_s)), parse_smi_query_xml)
        if isinstance(query, Unavailable):
            gpus = Unavailable(f"{_text(gpus)}; fallback nvidia-smi -q -x: {query.reason}")
        else:
            driver, cuda = query.driver_version, query.cuda_version
            gpus = _with_compute_capability(query, world, left(smi_s))
    if isinstance(gpus, list):
        gpus = [_with_sysfs_numa(gpu, world) for gpu in gpus]
    if isinstance(driver, Unavailable) and isinstance(kernel_module, KernelModule):
        driver = kernel_module.version
    return NvidiaFacts(
        driver_version=driver,
        cuda_driver_version=cuda,
        kernel_module=_map(kernel_module, lambda module: module.description),
        gpus=gpus,
        topology=topology_job.result(left(smi_s + 1.0)),
        xid_events=xid_job.result(left(3 * KERNEL_LOG_TIMEOUT_S + 1.0)),
        device_files=device_files,
    )


def collect_topology(world: GpuWorld, timeout_s: float) -> Maybe[TopologyFacts]:
    """``topo -m`` and the three p2p matrices, run side by side.

    The p2p matrices cover the GPUs only: they are indexed like the ``GPU*`` entries at the head
    of ``devices`` (``topo -m`` lists GPUs before NICs).
    """
    p2p_jobs = {mode: _Background(f"nvidia-smi topo -p2p {mode}",
                                  _p2p_reader(world, mode, timeout_s)) for mode in "rwn"}
    topology = _map(world.nvidia_smi(["topo", "-m"], timeout_s), parse_topo_matrix)
    if isinstance(topology, Unavailable):
        return topology
    gpus = [device for device in topology.devices if device.startswith("GPU")]

    def matrix(mode: str) -> Maybe[list[list[str]]]:
        p2p = p2p_jobs[mode].result(timeout_s + 1.0)
        return p2p if isinstance(p2p, Unavailable) else p2p.aligned(gpus)

    return dataclasses.replace(topology, p2p_read=matrix("r"), p2p_write=matrix("w"),
                               p2p_nvlink=matrix("n"))


def _p2p_reader(world: GpuWorld, mode: str, timeout_s: float) -> Callable[[], Maybe[P2pMatrix]]:
    def read() -> Maybe[P2pMatrix]:
        return _map(world.nvidia_smi(["topo", "-p2p", mode], timeout_s), parse_topo_p2p)
    return read


def _xid_events(world: GpuWorld, timeout_s: float) -> Maybe[list[XidEvent]]:
    return _map(world.kernel_log(timeout_s), parse_xid_events)


def _with_compute_capability(query: SmiQuery, world: GpuWorld, timeout_s: float) -> list[GpuFacts]:
    """-q -x lacks the compute capability; ``--query-gpu=compute_cap`` has it on recent drivers."""
    if all(not isinstance(gpu.compute_capability, Unavailable) for gpu in query.gpus):
        return query.gpus
    text = world.nvidia_smi(COMPUTE_CAP_QUERY, timeout_s)
    if isinstance(text, Unavailable):
        return query.gpus
    capabilities = parse_compute_cap_csv(text)
    return [dataclasses.replace(gpu, compute_capability=capabilities[gpu.bus_id])
            if gpu.bus_id in capabilities else gpu for gpu in query.gpus]


def _with_sysfs_numa(gpu: GpuFacts, world: GpuWorld) -> GpuFacts:
    """NVML reports NotSupported for the NUMA node on many systems; sysfs knows it."""
    if not isinstance(gpu.numa_node, Unavailable):
        return gpu
    node = world.sysfs_numa_node(gpu.bus_id)
    return gpu if isinstance(node, Unavailable) else dataclasses.replace(gpu, numa_node=node)


def _map(value: Maybe[T], convert: Callable[[T], Maybe[U]]) -> Maybe[U]:
    return value if isinstance(value, Unavailable) else convert(value)


def _text(value: object) -> str:
    return value.reason if isinstance(value, Unavailable) else str(value)

