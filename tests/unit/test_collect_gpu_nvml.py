"""The NVML layer: value decoding, the real pynvml wrapper's calls, and robustness to odd readings."""

from __future__ import annotations

import copy
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterkit.node.collect.nvml import (
    NvmlCallError,
    NvmlReading,
    PynvmlApi,
    decode_clock_event_reasons,
    format_cuda_driver_version,
    normalize_bus_id,
    read_nvml,
)
from clusterkit.node.collect.nvml_replay import ReplayNvml
from clusterkit.node.facts import Unavailable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
H100 = FIXTURES / "h100-x1" / "nvml-readings.json"
NVLINK8 = FIXTURES / "synthetic-8xh100-nvlink" / "nvml-readings.json"
REMAP = FIXTURES / "synthetic-row-remap-pending" / "nvml-readings.json"


@pytest.mark.parametrize(("mask", "names"), [
    (0, []),
    (1, ["gpu_idle"]),
    (0x4 | 0x40, ["sw_power_cap", "hw_thermal_slowdown"]),
    (0x1FF, ["gpu_idle", "applications_clocks_setting", "sw_power_cap", "hw_slowdown", "sync_boost",
             "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown",
             "display_clocks_setting"]),
    (0x8 | 0x400, ["hw_slowdown", "unknown_0x400"]),
])
def test_clock_event_reason_bits_decode_to_nvml_names(mask: int, names: list[str]) -> None:
    assert decode_clock_event_reasons(mask) == names


@pytest.mark.parametrize(("text", "normal"), [
    ("00000000:00:06.0", "00000000:00:06.0"),
    ("0000:3b:00.0", "00000000:3B:00.0"),
    ("PCI:0000:3b:00", "00000000:3B:00.0"),
    ("3b:00.0", "00000000:3B:00.0"),
    (" 00000001:af:00.1 ", "00000001:AF:00.1"),
    ("not a bus id", "not a bus id"),
])
def test_bus_ids_are_normalised_to_nvmls_8_digit_domain_form(text: str, normal: str) -> None:
    assert normalize_bus_id(text) == normal


def test_cuda_driver_version_integer_becomes_major_dot_minor() -> None:
    assert format_cuda_driver_version(13000) == "13.0"
    assert format_cuda_driver_version(12040) == "12.4"
    assert format_cuda_driver_version(11080) == "11.8"


# --------------------------------------------------------------- PynvmlApi against the pynvml API

pynvml = pytest.importorskip("pynvml")


def _as_pynvml_error(exc: NvmlCallError) -> Exception:
    """A recorded failure text (``NVMLError_NotSupported: ...``) as the real pynvml exception."""
    class_name = str(exc).split(":")[0]
    for code, cls in pynvml.NVMLError._valClassMapping.items():
        if cls.__name__ == class_name:
            return pynvml.NVMLError(code)  # type: ignore[no-any-return]
    return pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)  # type: ignore[no-any-return]


def fake_pynvml(readings_path: Path) -> types.ModuleType:
    """The edge of an NVML this machine lacks: pynvml's functions, answering from a recording.

    Only functions and constants the real ``pynvml`` has are provided, so a misspelt call in
    ``PynvmlApi`` shows up as a missing fact.
    """
    replay = ReplayNvml(str(readings_path))
    replay.init()
    ns = types.SimpleNamespace
    counters = {pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT: "crc_flit",
                pynvml.NVML_NVLINK_ERROR_DL_REPLAY: "replay",
                pynvml.NVML_NVLINK_ERROR_DL_RECOVERY: "recovery"}
    clocks = {pynvml.NVML_CLOCK_SM: "sm", pynvml.NVML_CLOCK_MEM: "mem"}
    functions: dict[str, Callable[..., Any]] = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlSystemGetDriverVersion": replay.driver_version,
        "nvmlSystemGetCudaDriverVersion": replay.cuda_driver_version,
        "nvmlDeviceGetCount": replay.device_count,
        "nvmlDeviceGetHandleByIndex": lambda index: index,
        "nvmlDeviceGetName": replay.name,
        "nvmlDeviceGetUUID": replay.uuid,
        "nvmlDeviceGetPciInfo": lambda h: ns(busId=replay.pci_bus_id(h).encode()),
        "nvmlDeviceGetMemoryInfo": lambda h: ns(total=replay.memory_info(h)[0],
                                                used=replay.memory_info(h)[1]),
        "nvmlDeviceGetUtilizationRates": lambda h: ns(gpu=replay.utilization(h)[0],
                                                      memory=replay.utilization(h)[1]),
        "nvmlDeviceGetTemperature": lambda h, sensor: (
            replay.temperature_c(h) if sensor == pynvml.NVML_TEMPERATURE_GPU else 0),
        "nvmlDeviceGetPowerUsage": replay.power_usage_mw,
        "nvmlDeviceGetEnforcedPowerLimit": replay.enforced_power_limit_mw,
        "nvmlDeviceGetClockInfo": lambda h, clock: replay.clock_mhz(h, clocks[clock]),
        "nvmlDeviceGetMaxClockInfo": lambda h, clock: replay.max_clock_mhz(h, clocks[clock]),
        "nvmlDeviceGetCurrentClocksEventReasons": replay.clock_event_reasons,
        "nvmlDeviceGetPerformanceState": replay.performance_state,
        "nvmlDeviceGetPersistenceMode": replay.persistence_mode,
        "nvmlDeviceGetComputeMode": replay.compute_mode,
        "nvmlDeviceGetMigMode": lambda h: list(replay.mig_mode(h)),
        "nvmlDeviceGetCurrPcieLinkGeneration": lambda h: replay.pcie_link_generation(h, False),
        "nvmlDeviceGetMaxPcieLinkGeneration": lambda h: replay.pcie_link_generation(h, True),
        "nvmlDeviceGetCurrPcieLinkWidth": lambda h: replay.pcie_link_width(h, False),
        "nvmlDeviceGetMaxPcieLinkWidth": lambda h: replay.pcie_link_width(h, True),
        "nvmlDeviceGetPcieReplayCounter": replay.pcie_replay_counter,
        "nvmlDeviceGetEccMode": lambda h: list(replay.ecc_mode(h)),
        "nvmlDeviceGetTotalEccErrors": lambda h, kind, counter: replay.total_ecc_errors(
            h, kind == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, counter == pynvml.NVML_AGGREGATE_ECC),
        "nvmlDeviceGetRetiredPages": lambda h, cause: [0] * replay.retired_page_count(
            h, cause == pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
        "nvmlDeviceGetRetiredPagesPendingStatus": replay.retired_pages_pending,
        "nvmlDeviceGetRemappedRows": replay.remapped_rows,
        "nvmlDeviceGetNvLinkState": replay.nvlink_state,
        "nvmlDeviceGetNvLinkVersion": replay.nvlink_version,
        "nvmlDeviceGetNvLinkRemotePciInfo": lambda h, link: ns(
            busId=replay.nvlink_remote_bus_id(h, link).encode()),
        "nvmlDeviceGetNvLinkErrorCounter": lambda h, link, c: replay.nvlink_error_counter(
            h, link, counters[c]),
        "nvmlDeviceGetNumaNodeId": replay.numa_node,
        "nvmlDeviceGetComputeRunningProcesses": lambda h: [ns(pid=1)] * replay.compute_process_count(h),
        "nvmlDeviceGetCudaComputeCapability": replay.cuda_compute_capability,
    }
    module = types.ModuleType("pynvml")
    for name, value in vars(pynvml).items():
        if name.startswith("NVML") or name.startswith("NVMLError"):
            setattr(module, name, value)
    for name, func in functions.items():
        assert hasattr(pynvml, name), f"the real pynvml has no {name}"

        def call(*args: Any, _func: Callable[..., Any] = func) -> Any:
            try:
                return _func(*args)
            except NvmlCallError as exc:
                raise _as_pynvml_error(exc) from None

        setattr(module, name, call)
    return module


@pytest.mark.parametrize("path", [H100, NVLINK8, REMAP], ids=lambda p: p.parent.name)
def test_pynvml_wrapper_reads_the_same_facts_as_the_replay(path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(path))
    through_pynvml = read_nvml(PynvmlApi(), 2.0)
    replayed = read_nvml(ReplayNvml(str(path)), 2.0)
    if path == H100:  # keys the real recording lacks read as NotSupported through the fake pynvml
        assert isinstance(through_pynvml.gpus, list) and isinstance(replayed.gpus, list)
        ecc = through_pynvml.gpus[0].ecc
        assert isinstance(ecc.mode_enabled, Unavailable)
        assert isinstance(ecc.aggregate_uncorrected, Unavailable)
        through_pynvml.gpus[0].ecc = replayed.gpus[0].ecc
    assert through_pynvml == replayed


def test_pynvml_errors_read_as_nvml_error_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(REMAP))
    reading = read_nvml(PynvmlApi(), 2.0)
    assert isinstance(reading.gpus, list)
    assert reading.gpus[2].temperature_c == Unavailable("NVMLError_GpuIsLost: GPU is lost")


def test_missing_pynvml_module_is_nvml_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    reading = read_nvml(PynvmlApi(), 2.0)
    assert reading.init_failed
    assert isinstance(reading.gpus, Unavailable)
    assert reading.gpus.reason.startswith(
        "NVML not found: the pynvml module (nvidia-ml-py) cannot be imported")


def test_missing_libnvidia_ml_is_nvml_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    module = fake_pynvml(H100)

    def library_missing() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    module.nvmlInit = library_missing  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", module)
    reading = read_nvml(PynvmlApi(), 2.0)
    assert isinstance(reading.driver_version, Unavailable)
    assert reading.driver_version.reason.startswith(
        "NVML not found: NVMLError_LibraryNotFound: NVML Shared Library Not Found")


# ------------------------------------------------------------------------------ odd readings (fuzz)

H100_READINGS = json.loads(H100.read_text(encoding="utf-8"))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(H100_READINGS["gpus"][0])), JSON_VALUES, max_size=8),
       st.dictionaries(st.sampled_from(["driver", "cuda_driver"]), JSON_VALUES))
def test_read_nvml_never_raises_on_odd_recorded_values(gpu_changes: dict[str, Any],
                                                       top: dict[str, Any]) -> None:
    readings = copy.deepcopy(H100_READINGS)
    readings["gpus"][0].update(gpu_changes)
    readings.update(top)
    reading = read_nvml(ReplayNvml(readings), 2.0)
    assert isinstance(reading, NvmlReading)
    assert isinstance(reading.gpus, list) and len(reading.gpus) == 1
