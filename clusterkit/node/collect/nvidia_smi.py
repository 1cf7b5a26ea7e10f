"""Parsers for ``nvidia-smi`` output and ``/proc/driver/nvidia/version``, and a runner for nvidia-smi.

``nvidia-smi -q -x`` is the fallback source of GPU facts when NVML's Python bindings cannot load (a
node's bare ``python3`` rarely has pynvml) but nvidia-smi works. ``topo -m`` and ``topo -p2p r|w|n``
give the GPU/NIC topology. Parsers never raise: malformed text gives ``Unavailable`` or partial facts.
Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable, TypeVar

from clusterkit.node.collect.deadline import run_command
from clusterkit.node.collect.nvml import CLOCK_EVENT_REASON_BITS, normalize_bus_id
from clusterkit.node.facts import (
    EccFacts,
    GpuFacts,
    Maybe,
    RemappedRowsFacts,
    RetiredPagesFacts,
    TopologyFacts,
    Unavailable,
)

T = TypeVar("T")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CELL_SEPARATOR = re.compile(r"\t| {2,}")
_GPU_NAME = re.compile(r"^GPU\d+$")
_NIC_LEGEND = re.compile(r"^\s*(NIC\d+):\s*(\S+)\s*$")
#: Columns of ``topo -m`` after the device columns.
TOPO_TRAILING_COLUMNS = ("CPU Affinity", "NUMA Affinity", "GPU NUMA ID")
#: A matrix cell that the text did not give.
UNKNOWN_CELL = "?"


def run_nvidia_smi(args: list[str], timeout_s: float) -> Maybe[str]:
    """stdout of ``nvidia-smi ARGS``; ``Unavailable`` when missing, hung, or exiting non-zero."""
    result = run_command(["nvidia-smi", *args], timeout_s)
    if isinstance(result, Unavailable):
        return result
    if not result.ok:
        return Unavailable("nvidia-smi {} exited {}: {}".format(
            " ".join(args), result.returncode, result.tail(2) or "no output"))
    return result.stdout


def strip_ansi(text: str) -> str:
    """Remove terminal escapes (``topo -m`` underlines its header with ``ESC[4m``)."""
    return _ANSI.sub("", text)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in _CELL_SEPARATOR.split(line) if cell.strip()]


# --------------------------------------------------------------------------------------- topo -m


def parse_topo_matrix(text: str) -> Maybe[TopologyFacts]:
    """``nvidia-smi topo -m``: devices (GPUs then NICs), the link matrix, affinities, NIC names.

    The p2p matrices are left ``Unavailable``; fill them from :func:`parse_topo_p2p`.
    Cells the text lacks are ``"?"``.
    """
    lines = strip_ansi(text).splitlines()
    header_at = None
    for number, line in enumerate(lines):
        if line[:1].isspace() and any(_GPU_NAME.match(cell) for cell in _cells(line)):
            header_at = number
            break
    if header_at is None:
        return Unavailable("nvidia-smi topo -m: no header row naming GPU columns")
    columns = _cells(lines[header_at])
    devices: list[str] = []
    for column in columns:
        if column in TOPO_TRAILING_COLUMNS:
            break
        devices.append(column)
    trailing = columns[len(devices):]
    rows: dict[str, list[str]] = {}
    cpu_affinity: dict[str, str] = {}
    numa_affinity: dict[str, str] = {}
    nic_names: dict[str, str] = {}
    in_table = True
    for line in lines[header_at + 1:]:
        if line.strip().startswith("Legend"):
            in_table = False
        legend = _NIC_LEGEND.match(line)
        if legend and not in_table:
            nic_names[legend.group(1)] = legend.group(2)
            continue
        cells = _cells(line)
        if not in_table or not cells or cells[0] not in devices or cells[0] in rows:
            continue
        rows[cells[0]] = cells[1:1 + len(devices)]
        extra = dict(zip(trailing, cells[1 + len(devices):]))
        if "CPU Affinity" in extra:
            cpu_affinity[cells[0]] = extra["CPU Affinity"]
        if "NUMA Affinity" in extra:
            numa_affinity[cells[0]] = extra["NUMA Affinity"]
    if not rows:
        return Unavailable("nvidia-smi topo -m: a header but no device rows")
    matrix = [_padded(rows.get(device, []), len(devices)) for device in devices]
    not_collected = Unavailable("not collected")
    return TopologyFacts(devices=devices, matrix=matrix, cpu_affinity=cpu_affinity,
                         numa_affinity=numa_affinity, nic_names=nic_names, p2p_read=not_collected,
                         p2p_write=not_collected, p2p_nvlink=not_collected)


def _padded(row: list[str], size: int) -> list[str]:
    return row + [UNKNOWN_CELL] * (size - len(row))


@dataclass
class P2pMatrix:
    """``nvidia-smi topo -p2p X``: GPU names and the status matrix (``X``, ``OK``, ``CNS``, ``NS``...)."""

    devices: list[str]
    matrix: list[list[str]]

    def aligned(self, devices: list[str]) -> list[list[str]]:
        """The matrix re-indexed by ``devices`` (``topo -m``'s GPU order); unknown cells ``"?"``."""
        position = {name: i for i, name in enumerate(self.devices)}

        def cell(row: str, column: str) -> str:
            if row not in position or column not in position:
                return UNKNOWN_CELL
            values = self.matrix[position[row]]
            at = position[column]
            return values[at] if at < len(values) else UNKNOWN_CELL

        return [[cell(row, column) for column in devices] for row in devices]


def parse_topo_p2p(text: str) -> Maybe[P2pMatrix]:
    """``nvidia-smi topo -p2p r|w|n|a``."""
    lines = strip_ansi(text).splitlines()
    devices: list[str] = []
    rows: dict[str, list[str]] = {}
    for line in lines:
        if line.strip().startswith("Legend"):
            break
        cells = _cells(line)
        if not cells:
            continue
        if not devices:
            if all(_GPU_NAME.match(cell) for cell in cells) and line[:1].isspace():
                devices = cells
            continue
        if cells[0] in devices and cells[0] not in rows:
            rows[cells[0]] = cells[1:1 + len(devices)]
    if not devices:
        return Unavailable("nvidia-smi topo -p2p: no header row naming GPU columns")
    if not rows:
        return Unavailable("nvidia-smi topo -p2p: a header but no GPU rows")
    return P2pMatrix(devices, [_padded(rows.get(device, []), len(devices)) for device in devices])


# ----------------------------------------------------------------------------------- -q -x (XML)


@dataclass
class SmiQuery:
    """What ``nvidia-smi -q -x`` says: driver, the CUDA version it supports, and every GPU."""

    driver_version: Maybe[str]
    cuda_version: Maybe[str]
    gpus: list[GpuFacts]


_NOT_A_VALUE = {"", "n/a", "[n/a]", "not supported", "[not supported]", "unknown error", "[unknown error]",
                "requested functionality has been deprecated"}
_LEADING_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)")


class _Gpu:
    """Typed reads of one ``<gpu>`` element; a missing or ``N/A`` value becomes ``Unavailable``."""

    def __init__(self, element: ET.Element) -> None:
        self.element = element

    def text(self, *paths: str) -> Maybe[str]:
        """The first of ``paths`` that exists; its text if it is a value."""
        for path in paths:
            found = self.element.find(path)
            if found is None:
                continue
            value = " ".join((found.text or "").split())
            if value.lower() in _NOT_A_VALUE:
                return Unavailable(f"nvidia-smi -q reports {value or 'nothing'} for {path}")
            return value
        return Unavailable("not in nvidia-smi -q -x output ({})".format(" or ".join(paths)))

    def number(self, *paths: str) -> Maybe[float]:
        value = self.text(*paths)
        if isinstance(value, Unavailable):
            return value
        match = _LEADING_NUMBER.match(value)
        if not match:
            return Unavailable(f"nvidia-smi -q: {paths[0]} is not a number: {value!r}")
        return float(match.group(1))

    def integer(self, *paths: str, scale: int = 1) -> Maybe[int]:
        value = self.number(*paths)
        return value if isinstance(value, Unavailable) else int(value * scale)

    def flag(self, path: str, true: str, false: str) -> Maybe[bool]:
        value = self.text(path)
        if isinstance(value, Unavailable):
            return value
        if value.lower() == true.lower():
            return True
        if value.lower() == false.lower():
            return False
        return Unavailable(f"nvidia-smi -q: unexpected {path}: {value!r}")


def parse_smi_query_xml(text: str) -> Maybe[SmiQuery]:
    """``nvidia-smi -q -x``: driver and CUDA versions and per-GPU facts (no NVLink, no NUMA node)."""
    try:
        root = ET.fromstring(text)
    except (ET.ParseError, ValueError) as exc:
        return Unavailable(f"nvidia-smi -q -x: not valid XML ({exc})")
    if root.tag != "nvidia_smi_log":
        return Unavailable(f"nvidia-smi -q -x: unexpected root element <{root.tag}>")
    top = _Gpu(root)
    gpus = [_gpu_from_xml(_Gpu(element), index) for index, element in enumerate(root.findall("gpu"))]
    return SmiQuery(top.text("driver_version"), top.text("cuda_version"), gpus)


def _gpu_from_xml(gpu: _Gpu, index: int) -> GpuFacts:
    bus_id = gpu.text("pci/pci_bus_id")
    if isinstance(bus_id, Unavailable):
        bus_id = gpu.element.get("id") or str(bus_id)
    processes = gpu.element.find("processes")
    return GpuFacts(
        index=index,
        name=_string(gpu.text("product_name")),
        uuid=_string(gpu.text("uuid")),
        bus_id=normalize_bus_id(bus_id),
        compute_capability=gpu.text("compute_cap"),
        memory_total_bytes=gpu.integer("fb_memory_usage/total", scale=1 << 20),
        memory_used_bytes=gpu.integer("fb_memory_usage/used", scale=1 << 20),
        utilization_gpu_pct=gpu.integer("utilization/gpu_util"),
        utilization_memory_pct=gpu.integer("utilization/memory_util"),
        temperature_c=gpu.integer("temperature/gpu_temp"),
        power_draw_w=gpu.number("gpu_power_readings/average_power_draw", "power_readings/power_draw",
                                "gpu_power_readings/instant_power_draw"),
        power_limit_w=gpu.number("gpu_power_readings/current_power_limit",
                                 "power_readings/enforced_power_limit", "power_readings/power_limit"),
        sm_clock_mhz=gpu.integer("clocks/sm_clock"),
        sm_clock_max_mhz=gpu.integer("max_clocks/sm_clock"),
        mem_clock_mhz=gpu.integer("clocks/mem_clock"),
        mem_clock_max_mhz=gpu.integer("max_clocks/mem_clock"),
        clock_event_reasons=_clock_event_reasons(gpu.element),
        performance_state=_map_text(gpu.text("performance_state"), lambda p: int(p.lstrip("Pp"))),
        persistence_mode=gpu.flag("persistence_mode", "Enabled", "Disabled"),
        compute_mode=_map_text(gpu.text("compute_mode"), lambda mode: mode.lower().replace(" ", "_")),
        mig_enabled=gpu.flag("mig_mode/current_mig", "Enabled", "Disabled"),
        pcie_gen_current=gpu.integer("pci/pci_gpu_link_info/pcie_gen/current_link_gen"),
        pcie_gen_max=gpu.integer("pci/pci_gpu_link_info/pcie_gen/max_link_gen"),
        pcie_width_current=gpu.integer("pci/pci_gpu_link_info/link_widths/current_link_width"),
        pcie_width_max=gpu.integer("pci/pci_gpu_link_info/link_widths/max_link_width"),
        pcie_replay_count=gpu.integer("pci/replay_counter"),
        ecc=_ecc_from_xml(gpu),
        retired_pages=RetiredPagesFacts(
            single_bit=gpu.integer("retired_pages/multiple_single_bit_retirement/retired_count"),
            double_bit=gpu.integer("retired_pages/double_bit_retirement/retired_count"),
            pending=gpu.flag("retired_pages/pending_retirement", "Yes", "No"),
        ),
        remapped_rows=RemappedRowsFacts(
            correctable=gpu.integer("remapped_rows/remapped_row_corr"),
            uncorrectable=gpu.integer("remapped_rows/remapped_row_unc"),
            pending=gpu.flag("remapped_rows/remapped_row_pending", "Yes", "No"),
            failure=gpu.flag("remapped_rows/remapped_row_failure", "Yes", "No"),
        ),
        nvlinks=Unavailable("nvidia-smi -q -x does not report NVLink (read through NVML)"),
        numa_node=gpu.integer("numa_node"),
        compute_processes=(len(processes.findall("process_info")) if processes is not None
                           else Unavailable("not in nvidia-smi -q -x output (processes)")),
    )


def _string(value: Maybe[str]) -> str:
    return str(value) if isinstance(value, Unavailable) else value


def _map_text(value: Maybe[str], convert: Callable[[str], T]) -> Maybe[T]:
    if isinstance(value, Unavailable):
        return value
    try:
        return convert(value)
    except ValueError:
        return Unavailable(f"nvidia-smi -q: unexpected value {value!r}")


def _clock_event_reasons(gpu: ET.Element) -> Maybe[list[str]]:
    for section, prefix in (("clocks_event_reasons", "clocks_event_reason_"),
                            ("clocks_throttle_reasons", "clocks_throttle_reason_")):
        element = gpu.find(section)
        if element is None:
            continue
        active = [child.tag[len(prefix):] for child in element
                  if child.tag.startswith(prefix) and (child.text or "").strip() == "Active"]
        order = [name for _, name in CLOCK_EVENT_REASON_BITS]
        return sorted(active, key=lambda name: order.index(name) if name in order else len(order))
    return Unavailable("not in nvidia-smi -q -x output (clocks_event_reasons)")


def _ecc_counts(gpu: _Gpu, section: str) -> tuple[Maybe[int], Maybe[int]]:
    """(corrected, uncorrected) summed over memories; old drivers use single_bit/double_bit totals."""
    element = gpu.element.find(section)
    if element is None:
        missing = Unavailable(f"not in nvidia-smi -q -x output ({section})")
        return missing, missing
    if element.find("single_bit/total") is not None:
        return (gpu.integer(f"{section}/single_bit/total"), gpu.integer(f"{section}/double_bit/total"))
    corrected: list[int] = []
    uncorrected: list[int] = []
    for child in element:
        value = _LEADING_NUMBER.match(child.text or "")
        if value is None or "correctable" not in child.tag:
            continue
        target = uncorrected if "uncorrectable" in child.tag else corrected
        target.append(int(float(value.group(1))))
    none = Unavailable(f"nvidia-smi -q reports no counts in {section}")
    return (sum(corrected) if corrected else none, sum(uncorrected) if uncorrected else none)


def _ecc_from_xml(gpu: _Gpu) -> EccFacts:
    volatile_corrected, volatile_uncorrected = _ecc_counts(gpu, "ecc_errors/volatile")
    aggregate_corrected, aggregate_uncorrected = _ecc_counts(gpu, "ecc_errors/aggregate")
    return EccFacts(
        mode_enabled=gpu.flag("ecc_mode/current_ecc", "Enabled", "Disabled"),
        volatile_corrected=volatile_corrected,
        volatile_uncorrected=volatile_uncorrected,
        aggregate_corrected=aggregate_corrected,
        aggregate_uncorrected=aggregate_uncorrected,
    )


def parse_compute_cap_csv(text: str) -> dict[str, str]:
    """``nvidia-smi --query-gpu=pci.bus_id,compute_cap --format=csv,noheader`` -> {bus id: "9.0"}."""
    capabilities: dict[str, str] = {}
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 2 and re.match(r"^\d+\.\d+$", parts[1]):
            capabilities[normalize_bus_id(parts[0])] = parts[1]
    return capabilities


# ------------------------------------------------------------------------- /proc/driver/nvidia


@dataclass
class KernelModule:
    """``/proc/driver/nvidia/version``: the loaded kernel module's version and its description."""

    version: Maybe[str]
    description: str

    @property
    def open_source(self) -> bool:
        return "Open Kernel Module" in self.description


def parse_proc_driver_version(text: str) -> Maybe[KernelModule]:
    """The ``NVRM version:`` line, e.g. ``NVIDIA UNIX Open Kernel Module for x86_64  580.159.04 ...``."""
    for line in text.splitlines():
        if line.startswith("NVRM version:"):
            description = " ".join(line[len("NVRM version:"):].split())
            version = re.search(r"(?<![\w.])(\d+\.\d+(?:\.\d+)?)(?![\w.])", description)
            return KernelModule(
                version.group(1) if version else Unavailable("no version number in the NVRM line"),
                description)
    return Unavailable("no 'NVRM version:' line in /proc/driver/nvidia/version")
