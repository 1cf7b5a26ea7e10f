"""Replay recorded NVML readings (and the nvidia-smi texts beside them) as if a GPU node were here.

This is the edge of a world most machines lack. Tests use it, and so does ``collect_nvidia``: when the
environment variable ``CLUSTERKIT_NVML_REPLAY=/path/to/nvml-readings.json`` is set, NVML, nvidia-smi,
``/proc/driver/nvidia/version``, the kernel log and ``/dev/nvidia*`` are all read from the recording
instead of this machine (the namespace-cluster tests give fake nodes recorded GPUs this way).

Readings format (``tests/fixtures/h100-x1/nvml-readings.json`` is a real one): top level ``driver``,
``cuda_driver`` (13000), ``count``, ``gpus``. Each GPU is keyed by the NVML getter's name without
``nvmlDeviceGet``: ``Name``, ``UUID``, ``PciInfo.busId``, ``MemoryInfo {total, used}``,
``UtilizationRates {gpu, memory}``, ``Temperature``, ``PowerUsage`` and ``EnforcedPowerLimit`` (mW),
``ClockInfo``/``MaxClockInfo {SM, MEM}``, ``CurrentClocksEventReasons`` (bit mask),
``PerformanceState``, ``PersistenceMode``, ``ComputeMode``, ``MigMode [current, pending]``,
``Curr/MaxPcieLinkGeneration``, ``Curr/MaxPcieLinkWidth``, ``PcieReplayCounter``,
``TotalEccErrors {CORRECTED, UNCORRECTED}`` (the volatile counters: the real H100 recording shows 0
uncorrected while its ``nvidia-smi -q`` aggregate shows 2), ``RemappedRows [corr, unc, pending,
failure]``, ``NumaNodeId``, ``ComputeRunningProcesses [...]``, ``CudaComputeCapability [9, 0]``,
``MinorNumber``, and ``nvlink {"<link>": {...}}``. A failed call is recorded as
``{"error": "NVMLError_NotSupported: Not Supported"}`` and is replayed as that failure; a key that is
absent is replayed as "not in the recorded readings".

Keys the real recording lacks, used by synthetic recordings: ``EccMode [current, pending]``,
``TotalEccErrorsAggregate {CORRECTED, UNCORRECTED}``, ``RetiredPages {MULTIPLE_SINGLE_BIT_ECC_ERRORS,
DOUBLE_BIT_ECC_ERROR}`` (page lists or counts), ``RetiredPagesPendingStatus``, and per NVLink
``NvLinkState``, ``NvLinkVersion``, ``NvLinkRemotePciInfo {busId}``, ``NvLinkErrorCounter {DL_CRC_FLIT,
DL_REPLAY, DL_RECOVERY}``.

Files read beside the readings when present: ``nvidia-smi-q-x.xml``, ``nvidia-smi-topo-m.txt``,
``nvidia-smi-topo-p2p-{r,w,n}.txt``, ``nvidia-smi-query-compute-cap.csv``,
``proc-driver-nvidia-version.txt`` and ``dmesg.txt``.

Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clusterkit.node.collect.nvml import NvmlCallError, process_memory
from clusterkit.node.facts import Maybe, Unavailable

#: Environment variable naming a readings file that ``collect_nvidia`` replays instead of this machine.
REPLAY_ENV = "CLUSTERKIT_NVML_REPLAY"

#: ``nvidia-smi`` arguments -> the file beside the readings that holds their recorded output.
SMI_FILES = {
    ("-q", "-x"): "nvidia-smi-q-x.xml",
    ("topo", "-m"): "nvidia-smi-topo-m.txt",
    ("topo", "-p2p", "r"): "nvidia-smi-topo-p2p-r.txt",
    ("topo", "-p2p", "w"): "nvidia-smi-topo-p2p-w.txt",
    ("topo", "-p2p", "n"): "nvidia-smi-topo-p2p-n.txt",
    ("--query-gpu=pci.bus_id,compute_cap", "--format=csv,noheader"): "nvidia-smi-query-compute-cap.csv",
}

_NVLINK_COUNTER_KEYS = {"crc_flit": "DL_CRC_FLIT", "replay": "DL_REPLAY", "recovery": "DL_RECOVERY"}


def _raise_if_error(value: Any, what: str) -> Any:
    if isinstance(value, dict) and "error" in value:
        raise NvmlCallError(str(value["error"]))
    return value


class ReplayNvml:
    """An ``NvmlApi`` answering from a readings file (or an already loaded readings dict)."""

    def __init__(self, source: str | Path | dict[str, Any]) -> None:
        self._source = source
        self._readings: dict[str, Any] = {}

    def init(self) -> None:
        if isinstance(self._source, dict):
            self._readings = self._source
            return
        try:
            with open(self._source, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise NvmlCallError(f"cannot replay NVML readings {self._source}: {exc}") from None
        if not isinstance(data, dict):
            raise NvmlCallError(f"cannot replay NVML readings {self._source}: not a JSON object")
        self._readings = data

    def shutdown(self) -> None:
        return None

    # -- lookups

    def _top(self, key: str) -> Any:
        if key not in self._readings:
            raise NvmlCallError(f"not in the recorded readings ({key})")
        return _raise_if_error(self._readings[key], key)

    def _gpu(self, index: int) -> dict[str, Any]:
        gpus = self._readings.get("gpus")
        if not isinstance(gpus, list):
            raise NvmlCallError("not in the recorded readings (gpus)")
        for position, gpu in enumerate(gpus):
            if isinstance(gpu, dict) and gpu.get("Index", position) == index:
                return gpu
        raise NvmlCallError(f"NVMLError_InvalidArgument: Invalid Argument (no recorded GPU {index})")

    def _get(self, index: int, key: str) -> Any:
        gpu = self._gpu(index)
        if key not in gpu:
            raise NvmlCallError(f"not in the recorded readings ({key})")
        return _raise_if_error(gpu[key], key)

    def _link(self, index: int, link: int) -> dict[str, Any]:
        links = self._get(index, "nvlink")
        entry = links.get(str(link)) if isinstance(links, dict) else None
        if entry is None:
            raise NvmlCallError(
                f"NVMLError_InvalidArgument: Invalid Argument (no recorded link {link})")
        return _raise_if_error(entry, "nvlink")  # type: ignore[no-any-return]

    def _link_value(self, index: int, link: int, key: str) -> Any:
        entry = self._link(index, link)
        if key not in entry:
            raise NvmlCallError(f"not in the recorded readings (nvlink {link} {key})")
        return _raise_if_error(entry[key], key)

    # -- system

    def driver_version(self) -> str:
        return str(self._top("driver"))

    def cuda_driver_version(self) -> int:
        return int(self._top("cuda_driver"))

    def device_count(self) -> int:
        if "count" in self._readings:
            return int(self._top("count"))
        gpus = self._top("gpus")
        return len(gpus)

    def max_nvlinks(self, index: int) -> int:
        links = self._get(index, "nvlink")
        return len(links) if isinstance(links, dict) and links else 1

    # -- device

    def name(self, index: int) -> str:
        return str(self._get(index, "Name"))

    def uuid(self, index: int) -> str:
        return str(self._get(index, "UUID"))

    def pci_bus_id(self, index: int) -> str:
        return str(self._get(index, "PciInfo")["busId"])

    def memory_info(self, index: int) -> tuple[int, int]:
        info = self._get(index, "MemoryInfo")
        return int(info["total"]), int(info["used"])

    def utilization(self, index: int) -> tuple[int, int]:
        rates = self._get(index, "UtilizationRates")
        return int(rates["gpu"]), int(rates["memory"])

    def temperature_c(self, index: int) -> int:
        return int(self._get(index, "Temperature"))

    def power_usage_mw(self, index: int) -> int:
        return int(self._get(index, "PowerUsage"))

    def enforced_power_limit_mw(self, index: int) -> int:
        return int(self._get(index, "EnforcedPowerLimit"))

    def clock_mhz(self, index: int, clock: str) -> int:
        return int(_raise_if_error(self._get(index, "ClockInfo")[clock.upper()], "ClockInfo"))

    def max_clock_mhz(self, index: int, clock: str) -> int:
        return int(_raise_if_error(self._get(index, "MaxClockInfo")[clock.upper()], "MaxClockInfo"))

    def clock_event_reasons(self, index: int) -> int:
        # Older recordings only have the "throttle" name for the same reading.
        if "CurrentClocksEventReasons" in self._gpu(index):
            return int(self._get(index, "CurrentClocksEventReasons"))
        return int(self._get(index, "CurrentClocksThrottleReasons"))

    def performance_state(self, index: int) -> int:
        return int(self._get(index, "PerformanceState"))

    def persistence_mode(self, index: int) -> int:
        return int(self._get(index, "PersistenceMode"))

    def compute_mode(self, index: int) -> int:
        return int(self._get(index, "ComputeMode"))

    def mig_mode(self, index: int) -> tuple[int, int]:
        current, pending = self._get(index, "MigMode")
        return int(current), int(pending)

    def pcie_link_generation(self, index: int, maximum: bool) -> int:
        return int(self._get(index, "MaxPcieLinkGeneration" if maximum else "CurrPcieLinkGeneration"))

    def pcie_link_width(self, index: int, maximum: bool) -> int:
        return int(self._get(index, "MaxPcieLinkWidth" if maximum else "CurrPcieLinkWidth"))

    def pcie_replay_counter(self, index: int) -> int:
        return int(self._get(index, "PcieReplayCounter"))

    def ecc_mode(self, index: int) -> tuple[int, int]:
        current, pending = self._get(index, "EccMode")
        return int(current), int(pending)

    def total_ecc_errors(self, index: int, uncorrected: bool, aggregate: bool) -> int:
        counts = self._get(index, "TotalEccErrorsAggregate" if aggregate else "TotalEccErrors")
        return int(_raise_if_error(counts["UNCORRECTED" if uncorrected else "CORRECTED"], "TotalEccErrors"))

    def retired_page_count(self, index: int, double_bit: bool) -> int:
        pages = self._get(index, "RetiredPages")
        value = pages["DOUBLE_BIT_ECC_ERROR" if double_bit else "MULTIPLE_SINGLE_BIT_ECC_ERRORS"]
        return len(value) if isinstance(value, list) else int(value)

    def retired_pages_pending(self, index: int) -> int:
        gpu = self._gpu(index)
        if "RetiredPagesPendingStatus" not in gpu:
            # A recording that only tried RetiredPages learnt the feature is missing: the same
            # failure answers the pending query.
            self._get(index, "RetiredPages")
        return int(self._get(index, "RetiredPagesPendingStatus"))

    def remapped_rows(self, index: int) -> tuple[int, int, int, int]:
        corr, unc, pending, failure = self._get(index, "RemappedRows")
        return int(corr), int(unc), int(pending), int(failure)

    def nvlink_state(self, index: int, link: int) -> int:
        return int(self._link_value(index, link, "NvLinkState"))

    def nvlink_version(self, index: int, link: int) -> int:
        return int(self._link_value(index, link, "NvLinkVersion"))

    def nvlink_remote_bus_id(self, index: int, link: int) -> str:
        return str(self._link_value(index, link, "NvLinkRemotePciInfo")["busId"])

    def nvlink_error_counter(self, index: int, link: int, counter: str) -> int:
        counters = self._link_value(index, link, "NvLinkErrorCounter")
        return int(_raise_if_error(counters[_NVLINK_COUNTER_KEYS[counter]], "NvLinkErrorCounter"))

    def numa_node(self, index: int) -> int:
        return int(self._get(index, "NumaNodeId"))

    def compute_process_count(self, index: int) -> int:
        return len(self._get(index, "ComputeRunningProcesses"))

    def compute_processes(self, index: int) -> list[tuple[int, int | None]]:
        found = self._get(index, "ComputeRunningProcesses")
        return [(int(p["pid"]), process_memory(p.get("usedGpuMemory"))) for p in found if isinstance(p, dict)]

    def pcie_throughput_kbs(self, index: int) -> tuple[int, int]:
        rates = self._get(index, "PcieThroughput")  # {TX, RX} in KB/s
        return int(rates["TX"]), int(rates["RX"])

    def total_energy_mj(self, index: int) -> int:
        return int(self._get(index, "TotalEnergyConsumption"))

    def cuda_compute_capability(self, index: int) -> tuple[int, int]:
        major, minor = self._get(index, "CudaComputeCapability")
        return int(major), int(minor)


class ReplayDirectory:
    """The recorded files beside a readings file, answering what ``collect_nvidia`` would run or read."""

    def __init__(self, readings_path: str | Path) -> None:
        self.readings_path = Path(readings_path)
        self.directory = self.readings_path.parent

    def _read(self, name: str, what: str) -> Maybe[str]:
        path = self.directory / name
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return Unavailable(f"replay: {what} not recorded ({path}: {exc.strerror or exc})")

    def nvidia_smi(self, args: list[str]) -> Maybe[str]:
        """The recorded stdout of ``nvidia-smi ARGS``."""
        name = SMI_FILES.get(tuple(args))
        if name is None:
            return Unavailable("replay: nvidia-smi {} not recorded".format(" ".join(args)))
        return self._read(name, "nvidia-smi " + " ".join(args))

    def proc_driver_version(self) -> Maybe[str]:
        return self._read("proc-driver-nvidia-version.txt", "/proc/driver/nvidia/version")

    def kernel_log(self) -> Maybe[str]:
        return self._read("dmesg.txt", "kernel log (dmesg.txt)")

    def device_files(self) -> list[str]:
        """``/dev/nvidiaN`` for each recorded GPU's minor number, plus ``/dev/nvidiactl``."""
        try:
            with open(self.readings_path, encoding="utf-8") as f:
                gpus = json.load(f).get("gpus", [])
            minors = sorted({int(gpu.get("MinorNumber", position)) for position, gpu in enumerate(gpus)})
        except (OSError, ValueError, TypeError, AttributeError):
            return []
        return [f"/dev/nvidia{minor}" for minor in minors] + ["/dev/nvidiactl"]
