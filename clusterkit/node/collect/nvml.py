"""GPU facts from NVML, every call behind a deadline.

``NvmlApi`` is the narrow set of NVML calls clusterkit needs, addressed by device index. ``PynvmlApi``
is the real one (``pynvml`` from nvidia-ml-py, imported lazily); ``clusterkit.node.collect.nvml_replay``
replays recorded readings. ``read_nvml`` turns either into facts:

- each call runs under ``call_with_deadline``; the first call that does not answer marks the driver as
  hung, and every later read of this pass is ``Unavailable`` with that reason (no more waiting);
- a call that fails (``NotSupported``, ``GpuIsLost``...) makes only its own field ``Unavailable``.

NVML is not thread-safe across init/shutdown, so nothing here runs NVML calls concurrently.
Stdlib only (pynvml optional), Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar

from clusterkit.node.collect.deadline import call_with_deadline, describe_exception
from clusterkit.node.facts import (
    EccFacts,
    GpuFacts,
    Maybe,
    NvLinkFacts,
    RemappedRowsFacts,
    RetiredPagesFacts,
    Unavailable,
)

T = TypeVar("T")

#: NVML's clock-event (formerly "throttle") reason bits, with the names GpuFacts uses.
CLOCK_EVENT_REASON_BITS = (
    (0x0001, "gpu_idle"),
    (0x0002, "applications_clocks_setting"),
    (0x0004, "sw_power_cap"),
    (0x0008, "hw_slowdown"),
    (0x0010, "sync_boost"),
    (0x0020, "sw_thermal_slowdown"),
    (0x0040, "hw_thermal_slowdown"),
    (0x0080, "hw_power_brake_slowdown"),
    (0x0100, "display_clocks_setting"),
)

COMPUTE_MODE_NAMES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}

#: The NVLink error counters read per link (NVML_NVLINK_ERROR_DL_*).
NVLINK_COUNTERS = ("crc_flit", "replay", "recovery")

#: Prefix of the reason when the NVML library or its Python bindings cannot be found.
NVML_NOT_FOUND = "NVML not found"


class NvmlCallError(Exception):
    """An NVML failure whose text is already the reason to report (``NVMLError_NotSupported: ...``)."""


class NvmlNotFoundError(NvmlCallError):
    """The NVML library or the ``pynvml`` bindings are missing on this node."""


class NvmlApi(Protocol):
    """The NVML calls clusterkit makes. Devices are addressed by NVML index; failures raise."""

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def driver_version(self) -> str: ...
    def cuda_driver_version(self) -> int: ...
    def device_count(self) -> int: ...
    def max_nvlinks(self, index: int) -> int: ...
    def name(self, index: int) -> str: ...
    def uuid(self, index: int) -> str: ...
    def pci_bus_id(self, index: int) -> str: ...
    def memory_info(self, index: int) -> tuple[int, int]: ...  # (total, used) bytes
    def utilization(self, index: int) -> tuple[int, int]: ...  # (gpu, memory) percent
    def temperature_c(self, index: int) -> int: ...
    def power_usage_mw(self, index: int) -> int: ...
    def enforced_power_limit_mw(self, index: int) -> int: ...
    def clock_mhz(self, index: int, clock: str) -> int: ...  # clock: "sm" or "mem"
    def max_clock_mhz(self, index: int, clock: str) -> int: ...
    def clock_event_reasons(self, index: int) -> int: ...
    def performance_state(self, index: int) -> int: ...
    def persistence_mode(self, index: int) -> int: ...
    def compute_mode(self, index: int) -> int: ...
    def mig_mode(self, index: int) -> tuple[int, int]: ...  # (current, pending)
    def pcie_link_generation(self, index: int, maximum: bool) -> int: ...
    def pcie_link_width(self, index: int, maximum: bool) -> int: ...
    def pcie_replay_counter(self, index: int) -> int: ...
    def ecc_mode(self, index: int) -> tuple[int, int]: ...  # (current, pending)
    def total_ecc_errors(self, index: int, uncorrected: bool, aggregate: bool) -> int: ...
    def retired_page_count(self, index: int, double_bit: bool) -> int: ...
    def retired_pages_pending(self, index: int) -> int: ...
    def remapped_rows(self, index: int) -> tuple[int, int, int, int]: ...  # corr, unc, pending, failure
    def nvlink_state(self, index: int, link: int) -> int: ...
    def nvlink_version(self, index: int, link: int) -> int: ...
    def nvlink_remote_bus_id(self, index: int, link: int) -> str: ...
    def nvlink_error_counter(self, index: int, link: int, counter: str) -> int: ...
    def numa_node(self, index: int) -> int: ...
    def compute_process_count(self, index: int) -> int: ...
    def cuda_compute_capability(self, index: int) -> tuple[int, int]: ...
    # The monitor's per-process and slow queries (doctor does not call them).
    def compute_processes(self, index: int) -> list[tuple[int, int | None]]: ...  # (pid, bytes)
    def pcie_throughput_kbs(self, index: int) -> tuple[int, int]: ...  # (tx, rx) KB/s
    def total_energy_mj(self, index: int) -> int: ...


@dataclass
class NvmlReading:
    """What one NVML pass learnt; ``gpus`` is ``Unavailable`` when NVML could not start."""

    driver_version: Maybe[str]
    cuda_driver_version: Maybe[str]
    gpus: Maybe[list[GpuFacts]]
    #: True when NVML itself was missing or would not start (a fallback source may help).
    init_failed: bool = False
    #: The reason NVML stopped answering mid-pass, if it did.
    hung: str | None = None


# ------------------------------------------------------------------------------------------ helpers

_BUS_ID = re.compile(
    r"^(?:PCI:)?(?:([0-9A-Fa-f]{1,8}):)?([0-9A-Fa-f]{1,2}):([0-9A-Fa-f]{1,2})(?:\.([0-7]))?$")


def normalize_bus_id(text: str) -> str:
    """``0000:3b:00`` or ``PCI:0000:3b:00.0`` -> ``00000000:3B:00.0`` (NVML's form); else ``text``."""
    cleaned = text.strip()
    match = _BUS_ID.match(cleaned)
    if not match:
        return cleaned
    domain, bus, device, function = match.groups()
    return "{:08X}:{:02X}:{:02X}.{}".format(
        int(domain or "0", 16), int(bus, 16), int(device, 16), function or "0")


def decode_clock_event_reasons(mask: int) -> list[str]:
    """NVML's reason bit mask -> names (``["gpu_idle"]``); unknown bits become ``unknown_0x200``."""
    names = [name for bit, name in CLOCK_EVENT_REASON_BITS if mask & bit]
    known_bits = 0
    for bit, _ in CLOCK_EVENT_REASON_BITS:
        known_bits |= bit
    rest = mask & ~known_bits
    bit = 1
    while rest and bit <= rest:
        if rest & bit:
            names.append(f"unknown_{bit:#x}")
        bit <<= 1
    return names


def format_cuda_driver_version(version: int) -> str:
    """NVML's integer CUDA version -> ``"13.0"`` (13000), ``"12.4"`` (12040)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def nvml_error_text(exc: BaseException) -> str:
    """The reason to report for a failed call: ``NVMLError_NotSupported: Not Supported``."""
    if isinstance(exc, NvmlCallError):
        return str(exc)
    return describe_exception(exc)


_OUT_OF_TIME = "not read: the NVML pass ran out of time (slow driver?)"


class NvmlSession:
    """Runs NVML calls one at a time behind a deadline; after one hangs, answers without calling.

    ``pass_deadline`` (a ``time.monotonic()`` value) bounds the whole pass: calls after it are not made.
    """

    def __init__(self, timeout_s: float, pass_deadline: float | None = None) -> None:
        self.timeout_s = timeout_s
        self.pass_deadline = pass_deadline
        self.hung: str | None = None

    def call(self, what: str, func: Callable[[], T]) -> Maybe[T]:
        if self.hung is not None:
            return Unavailable(self.hung)
        timeout_s = self.timeout_s
        if self.pass_deadline is not None:
            left_s = self.pass_deadline - time.monotonic()
            if left_s <= 0:
                self.hung = _OUT_OF_TIME
                return Unavailable(self.hung)
            timeout_s = min(timeout_s, left_s)

        def guarded() -> tuple[bool, object]:
            try:
                return True, func()
            except BaseException as exc:
                return False, nvml_error_text(exc)

        outcome = call_with_deadline(guarded, timeout_s, what)
        if isinstance(outcome, Unavailable):
            if timeout_s < self.timeout_s:  # cut short by the pass deadline, not by a hang
                self.hung = _OUT_OF_TIME
                return Unavailable(f"{what}: {_OUT_OF_TIME}")
            self.hung = f"not read: NVML stopped answering ({outcome.reason})"
            return outcome
        ok, value = outcome
        if ok:
            return value  # type: ignore[return-value]
        return Unavailable(str(value))


def _map(value: Maybe[T], convert: Callable[[T], Any]) -> Maybe[Any]:
    """Apply ``convert`` to a read value; a conversion error becomes ``Unavailable``."""
    if isinstance(value, Unavailable):
        return value
    try:
        return convert(value)
    except (TypeError, ValueError, IndexError, KeyError, ArithmeticError) as exc:
        return Unavailable(f"unexpected NVML value {value!r}: {describe_exception(exc)}")


def _text(value: Maybe[str]) -> str:
    return str(value) if isinstance(value, Unavailable) else value


# -------------------------------------------------------------------------------------------- reads


def read_nvml(api: NvmlApi, timeout_s: float, pass_deadline: float | None = None) -> NvmlReading:
    """Read driver, CUDA driver version and every GPU. Never raises; never waits past a hang.

    ``timeout_s`` bounds each call; ``pass_deadline`` (``time.monotonic()``) the whole pass.
    """
    session = NvmlSession(timeout_s, pass_deadline)
    started = session.call("nvmlInit", api.init)
    if isinstance(started, Unavailable):
        reason = started.reason
        if not reason.startswith(NVML_NOT_FOUND):
            reason = "NVML did not start: " + reason
        return NvmlReading(Unavailable(reason), Unavailable(reason), Unavailable(reason),
                           init_failed=True, hung=session.hung)
    driver = session.call("nvmlSystemGetDriverVersion", api.driver_version)
    cuda = _map(session.call("nvmlSystemGetCudaDriverVersion", api.cuda_driver_version),
                format_cuda_driver_version)
    count = session.call("nvmlDeviceGetCount", api.device_count)
    gpus: Maybe[list[GpuFacts]]
    gpus = count if isinstance(count, Unavailable) else [read_gpu(session, api, index) for index in range(count)]
    if session.hung is None:
        session.call("nvmlShutdown", api.shutdown)
    return NvmlReading(driver, cuda, gpus, hung=session.hung)


def read_gpu(session: NvmlSession, api: NvmlApi, i: int) -> GpuFacts:
    """One GPU's facts; each field is read (and may fail) on its own."""
    call = session.call
    memory = call(f"nvmlDeviceGetMemoryInfo({i})", lambda: api.memory_info(i))
    util = call(f"nvmlDeviceGetUtilizationRates({i})", lambda: api.utilization(i))
    mig = call(f"nvmlDeviceGetMigMode({i})", lambda: api.mig_mode(i))
    return GpuFacts(
        index=i,
        name=_text(call(f"nvmlDeviceGetName({i})", lambda: api.name(i))),
        uuid=_text(call(f"nvmlDeviceGetUUID({i})", lambda: api.uuid(i))),
        bus_id=_text(_map(call(f"nvmlDeviceGetPciInfo({i})", lambda: api.pci_bus_id(i)),
                          normalize_bus_id)),
        compute_capability=_map(
            call(f"nvmlDeviceGetCudaComputeCapability({i})", lambda: api.cuda_compute_capability(i)),
            lambda cc: f"{int(cc[0])}.{int(cc[1])}"),
        memory_total_bytes=_map(memory, lambda m: int(m[0])),
        memory_used_bytes=_map(memory, lambda m: int(m[1])),
        utilization_gpu_pct=_map(util, lambda u: int(u[0])),
        utilization_memory_pct=_map(util, lambda u: int(u[1])),
        temperature_c=_map(call(f"nvmlDeviceGetTemperature({i})", lambda: api.temperature_c(i)), int),
        power_draw_w=_map(call(f"nvmlDeviceGetPowerUsage({i})", lambda: api.power_usage_mw(i)),
                          lambda mw: mw / 1000.0),
        power_limit_w=_map(
            call(f"nvmlDeviceGetEnforcedPowerLimit({i})", lambda: api.enforced_power_limit_mw(i)),
            lambda mw: mw / 1000.0),
        sm_clock_mhz=_map(call(f"nvmlDeviceGetClockInfo({i}, SM)", lambda: api.clock_mhz(i, "sm")), int),
        sm_clock_max_mhz=_map(
            call(f"nvmlDeviceGetMaxClockInfo({i}, SM)", lambda: api.max_clock_mhz(i, "sm")), int),
        mem_clock_mhz=_map(call(f"nvmlDeviceGetClockInfo({i}, MEM)", lambda: api.clock_mhz(i, "mem")), int),
        mem_clock_max_mhz=_map(
            call(f"nvmlDeviceGetMaxClockInfo({i}, MEM)", lambda: api.max_clock_mhz(i, "mem")), int),
        clock_event_reasons=_map(
            call(f"nvmlDeviceGetCurrentClocksEventReasons({i})", lambda: api.clock_event_reasons(i)),
            lambda mask: decode_clock_event_reasons(int(mask))),
        performance_state=_map(
            call(f"nvmlDeviceGetPerformanceState({i})", lambda: api.performance_state(i)), _pstate),
        persistence_mode=_map(
            call(f"nvmlDeviceGetPersistenceMode({i})", lambda: api.persistence_mode(i)),
            lambda mode: int(mode) == 1),
        compute_mode=_map(call(f"nvmlDeviceGetComputeMode({i})", lambda: api.compute_mode(i)),
                          lambda mode: COMPUTE_MODE_NAMES.get(int(mode), f"unknown({int(mode)})")),
        mig_enabled=_map(mig, lambda m: int(m[0]) == 1),
        pcie_gen_current=_map(call(f"nvmlDeviceGetCurrPcieLinkGeneration({i})",
                                   lambda: api.pcie_link_generation(i, False)), int),
        pcie_gen_max=_map(call(f"nvmlDeviceGetMaxPcieLinkGeneration({i})",
                               lambda: api.pcie_link_generation(i, True)), int),
        pcie_width_current=_map(call(f"nvmlDeviceGetCurrPcieLinkWidth({i})",
                                     lambda: api.pcie_link_width(i, False)), int),
        pcie_width_max=_map(call(f"nvmlDeviceGetMaxPcieLinkWidth({i})",
                                 lambda: api.pcie_link_width(i, True)), int),
        pcie_replay_count=_map(
            call(f"nvmlDeviceGetPcieReplayCounter({i})", lambda: api.pcie_replay_counter(i)), int),
        ecc=_read_ecc(session, api, i),
        retired_pages=_read_retired_pages(session, api, i),
        remapped_rows=_read_remapped_rows(session, api, i),
        nvlinks=read_nvlinks(session, api, i),
        numa_node=_map(call(f"nvmlDeviceGetNumaNodeId({i})", lambda: api.numa_node(i)), int),
        compute_processes=_map(
            call(f"nvmlDeviceGetComputeRunningProcesses({i})", lambda: api.compute_process_count(i)), int),
    )


def _pstate(value: int) -> Maybe[int]:
    state = int(value)
    # NVML_PSTATE_UNKNOWN is 32; real states are P0..P15.
    return state if 0 <= state <= 15 else Unavailable(f"unknown performance state ({state})")


def _read_ecc(session: NvmlSession, api: NvmlApi, i: int) -> EccFacts:
    def count(uncorrected: bool, aggregate: bool) -> Maybe[int]:
        what = "nvmlDeviceGetTotalEccErrors({}, {}, {})".format(
            i, "UNCORRECTED" if uncorrected else "CORRECTED", "AGGREGATE" if aggregate else "VOLATILE")
        return _map(session.call(what, lambda: api.total_ecc_errors(i, uncorrected, aggregate)), int)

    return EccFacts(
        mode_enabled=_map(session.call(f"nvmlDeviceGetEccMode({i})", lambda: api.ecc_mode(i)),
                          lambda mode: int(mode[0]) == 1),
        volatile_corrected=count(False, False),
        volatile_uncorrected=count(True, False),
        aggregate_corrected=count(False, True),
        aggregate_uncorrected=count(True, True),
    )


def _read_retired_pages(session: NvmlSession, api: NvmlApi, i: int) -> RetiredPagesFacts:
    return RetiredPagesFacts(
        single_bit=_map(session.call(f"nvmlDeviceGetRetiredPages({i}, MULTIPLE_SINGLE_BIT)",
                                     lambda: api.retired_page_count(i, False)), int),
        double_bit=_map(session.call(f"nvmlDeviceGetRetiredPages({i}, DOUBLE_BIT)",
                                     lambda: api.retired_page_count(i, True)), int),
        pending=_map(session.call(f"nvmlDeviceGetRetiredPagesPendingStatus({i})",
                                  lambda: api.retired_pages_pending(i)), lambda flag: int(flag) == 1),
    )


def _read_remapped_rows(session: NvmlSession, api: NvmlApi, i: int) -> RemappedRowsFacts:
    rows = session.call(f"nvmlDeviceGetRemappedRows({i})", lambda: api.remapped_rows(i))
    return RemappedRowsFacts(
        correctable=_map(rows, lambda r: int(r[0])),
        uncorrectable=_map(rows, lambda r: int(r[1])),
        pending=_map(rows, lambda r: bool(int(r[2]))),
        failure=_map(rows, lambda r: bool(int(r[3]))),
    )


def read_nvlinks(session: NvmlSession, api: NvmlApi, i: int) -> Maybe[list[NvLinkFacts]]:
    """Every NVLink of GPU ``i``; ``Unavailable`` when link 0 cannot be read (no NVLink)."""
    max_links = session.call("NVML_NVLINK_MAX_LINKS", lambda: api.max_nvlinks(i))
    if isinstance(max_links, Unavailable):
        return max_links
    links: list[NvLinkFacts] = []
    for link in range(int(max_links)):
        facts = _read_link(session, api, i, link)
        if isinstance(facts, Unavailable):
            if link == 0:
                return facts
            break  # past the last link this GPU has
        links.append(facts)
    return links


def _read_link(session: NvmlSession, api: NvmlApi, i: int, link: int) -> Maybe[NvLinkFacts]:
    state = session.call(f"nvmlDeviceGetNvLinkState({i}, {link})", lambda: api.nvlink_state(i, link))
    if isinstance(state, Unavailable):
        return state

    def counter(name: str) -> Maybe[int]:
        return _map(session.call(f"nvmlDeviceGetNvLinkErrorCounter({i}, {link}, {name})",
                                 lambda: api.nvlink_error_counter(i, link, name)), int)

    return NvLinkFacts(
        link=link,
        active=int(state) == 1,
        version=_map(session.call(f"nvmlDeviceGetNvLinkVersion({i}, {link})",
                                  lambda: api.nvlink_version(i, link)), int),
        remote_bus_id=_map(session.call(f"nvmlDeviceGetNvLinkRemotePciInfo({i}, {link})",
                                        lambda: api.nvlink_remote_bus_id(i, link)), normalize_bus_id),
        crc_errors=counter("crc_flit"),
        replay_errors=counter("replay"),
        recovery_errors=counter("recovery"),
    )


# ------------------------------------------------------------------------------------- real NVML


def _decode(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class PynvmlApi:
    """``NvmlApi`` over the real library through ``pynvml`` (nvidia-ml-py), imported on ``init``."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: dict[int, Any] = {}

    def init(self) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlNotFoundError(
                f"{NVML_NOT_FOUND}: the pynvml module (nvidia-ml-py) cannot be imported by "
                f"{sys.executable} ({describe_exception(exc)})") from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound as exc:
            raise NvmlNotFoundError(
                f"{NVML_NOT_FOUND}: {describe_exception(exc)} (libnvidia-ml.so.1 is not on the loader "
                "path: is the NVIDIA driver installed?)") from None
        self._nvml = pynvml

    def shutdown(self) -> None:
        self._nvml.nvmlShutdown()

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self._nvml.nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    def driver_version(self) -> str:
        return _decode(self._nvml.nvmlSystemGetDriverVersion())

    def cuda_driver_version(self) -> int:
        return int(self._nvml.nvmlSystemGetCudaDriverVersion())

    def device_count(self) -> int:
        return int(self._nvml.nvmlDeviceGetCount())

    def max_nvlinks(self, index: int) -> int:
        return int(self._nvml.NVML_NVLINK_MAX_LINKS)

    def name(self, index: int) -> str:
        return _decode(self._nvml.nvmlDeviceGetName(self._handle(index)))

    def uuid(self, index: int) -> str:
        return _decode(self._nvml.nvmlDeviceGetUUID(self._handle(index)))

    def pci_bus_id(self, index: int) -> str:
        return _decode(self._nvml.nvmlDeviceGetPciInfo(self._handle(index)).busId)

    def memory_info(self, index: int) -> tuple[int, int]:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle(index))
        return int(info.total), int(info.used)

    def utilization(self, index: int) -> tuple[int, int]:
        rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle(index))
        return int(rates.gpu), int(rates.memory)

    def temperature_c(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetTemperature(self._handle(index), self._nvml.NVML_TEMPERATURE_GPU))

    def power_usage_mw(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetPowerUsage(self._handle(index)))

    def enforced_power_limit_mw(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetEnforcedPowerLimit(self._handle(index)))

    def _clock_type(self, clock: str) -> int:
        return int(self._nvml.NVML_CLOCK_SM if clock == "sm" else self._nvml.NVML_CLOCK_MEM)

    def clock_mhz(self, index: int, clock: str) -> int:
        return int(self._nvml.nvmlDeviceGetClockInfo(self._handle(index), self._clock_type(clock)))

    def max_clock_mhz(self, index: int, clock: str) -> int:
        return int(self._nvml.nvmlDeviceGetMaxClockInfo(self._handle(index), self._clock_type(clock)))

    def clock_event_reasons(self, index: int) -> int:
        # Older bindings only have the "throttle" name for the same call.
        getter = getattr(self._nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if getter is None:
            getter = self._nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return int(getter(self._handle(index)))

    def performance_state(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetPerformanceState(self._handle(index)))

    def persistence_mode(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetPersistenceMode(self._handle(index)))

    def compute_mode(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetComputeMode(self._handle(index)))

    def mig_mode(self, index: int) -> tuple[int, int]:
        current, pending = self._nvml.nvmlDeviceGetMigMode(self._handle(index))
        return int(current), int(pending)

    def pcie_link_generation(self, index: int, maximum: bool) -> int:
        nvml = self._nvml
        if maximum:
            return int(nvml.nvmlDeviceGetMaxPcieLinkGeneration(self._handle(index)))
        return int(nvml.nvmlDeviceGetCurrPcieLinkGeneration(self._handle(index)))

    def pcie_link_width(self, index: int, maximum: bool) -> int:
        nvml = self._nvml
        if maximum:
            return int(nvml.nvmlDeviceGetMaxPcieLinkWidth(self._handle(index)))
        return int(nvml.nvmlDeviceGetCurrPcieLinkWidth(self._handle(index)))

    def pcie_replay_counter(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetPcieReplayCounter(self._handle(index)))

    def ecc_mode(self, index: int) -> tuple[int, int]:
        current, pending = self._nvml.nvmlDeviceGetEccMode(self._handle(index))
        return int(current), int(pending)

    def total_ecc_errors(self, index: int, uncorrected: bool, aggregate: bool) -> int:
        nvml = self._nvml
        error_type = (nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED if uncorrected
                      else nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED)
        counter = nvml.NVML_AGGREGATE_ECC if aggregate else nvml.NVML_VOLATILE_ECC
        return int(nvml.nvmlDeviceGetTotalEccErrors(self._handle(index), error_type, counter))

    def retired_page_count(self, index: int, double_bit: bool) -> int:
        nvml = self._nvml
        cause = (nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR if double_bit
                 else nvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)
        return len(nvml.nvmlDeviceGetRetiredPages(self._handle(index), cause))

    def retired_pages_pending(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetRetiredPagesPendingStatus(self._handle(index)))

    def remapped_rows(self, index: int) -> tuple[int, int, int, int]:
        corr, unc, pending, failure = self._nvml.nvmlDeviceGetRemappedRows(self._handle(index))
        return int(corr), int(unc), int(pending), int(failure)

    def nvlink_state(self, index: int, link: int) -> int:
        return int(self._nvml.nvmlDeviceGetNvLinkState(self._handle(index), link))

    def nvlink_version(self, index: int, link: int) -> int:
        return int(self._nvml.nvmlDeviceGetNvLinkVersion(self._handle(index), link))

    def nvlink_remote_bus_id(self, index: int, link: int) -> str:
        return _decode(self._nvml.nvmlDeviceGetNvLinkRemotePciInfo(self._handle(index), link).busId)

    def nvlink_error_counter(self, index: int, link: int, counter: str) -> int:
        nvml = self._nvml
        counter_id = {
            "crc_flit": nvml.NVML_NVLINK_ERROR_DL_CRC_FLIT,
            "replay": nvml.NVML_NVLINK_ERROR_DL_REPLAY,
            "recovery": nvml.NVML_NVLINK_ERROR_DL_RECOVERY,
        }[counter]
        return int(nvml.nvmlDeviceGetNvLinkErrorCounter(self._handle(index), link, counter_id))

    def numa_node(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetNumaNodeId(self._handle(index)))

    def compute_process_count(self, index: int) -> int:
        return len(self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle(index)))

    def compute_processes(self, index: int) -> list[tuple[int, int | None]]:
        found = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle(index))
        return [(int(p.pid), process_memory(getattr(p, "usedGpuMemory", None))) for p in found]

    def pcie_throughput_kbs(self, index: int) -> tuple[int, int]:
        nvml, handle = self._nvml, self._handle(index)
        return (int(nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_TX_BYTES)),
                int(nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_RX_BYTES)))

    def total_energy_mj(self, index: int) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle(index)))

    def cuda_compute_capability(self, index: int) -> tuple[int, int]:
        major, minor = self._nvml.nvmlDeviceGetCudaComputeCapability(self._handle(index))
        return int(major), int(minor)


def process_memory(value: object) -> int | None:
    """A process's GPU memory as NVML reports it; "not available" is None or 2**64-1 there."""
    if isinstance(value, int) and 0 <= value < (1 << 63):
        return value
    return None
