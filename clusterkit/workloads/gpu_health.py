"""GPU health from the head: every GPU's readings against its specification and against its peers.

Specifications are the vendors' datasheet figures (dense tensor-core rates, no sparsity; HBM
bandwidth); a GPU model missing from :data:`SPECS` is judged against its peers only. Pinned copies are
set against the GPU's PCIe link (generation x width, from the doctor's facts). Peers are the GPUs of
the same model across the cluster: a GPU well below their median is a straggler, whatever the
datasheet says.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterkit.core.findings import Finding, Outcome, Severity
from clusterkit.node.facts import GpuFacts, Maybe, NodeFacts, known
from clusterkit.workloads.expect import PCIE_GBS_PER_LANE
from clusterkit.workloads.run import RunOutcome

#: A GPU below this share of its peers' median is a straggler.
PEER_RATIO = 0.85
#: Below these shares of the datasheet (or of the PCIe link) a reading is worth a look.
SPEC_RATIO = {"memory_gbs": 0.6, "matmul_bfloat16": 0.4, "matmul_float16": 0.4, "h2d_gbs": 0.4, "d2h_gbs": 0.4}
METRICS = {"memory_gbs": ("device memory bandwidth", "GB/s"), "matmul_bfloat16": ("bf16 matmul", "TFLOPS"),
           "matmul_float16": ("fp16 matmul", "TFLOPS"), "h2d_gbs": ("pinned host-to-device copy", "GB/s"),
           "d2h_gbs": ("pinned device-to-host copy", "GB/s")}
SHORT = {"memory_gbs": "memory GB/s", "matmul_bfloat16": "bf16 TFLOPS", "matmul_float16": "fp16 TFLOPS",
         "h2d_gbs": "H2D GB/s", "d2h_gbs": "D2H GB/s"}


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet figures: HBM bandwidth (GB/s) and dense bf16/fp16 tensor rates (TFLOPS)."""

    match: str
    memory_gbs: float
    bf16_tflops: float | None
    fp16_tflops: float


#: Most specific names first: the first whose ``match`` is in the device name applies.
SPECS: tuple[GpuSpec, ...] = (
    GpuSpec("GH200", 4000.0, 989.0, 989.0),
    GpuSpec("H200", 4800.0, 989.0, 989.0),
    GpuSpec("H100 NVL", 3900.0, 835.0, 835.0),
    GpuSpec("H100 PCIe", 2000.0, 756.0, 756.0),
    GpuSpec("H100", 3350.0, 989.0, 989.0),
    GpuSpec("B200", 8000.0, 2250.0, 2250.0),
    GpuSpec("A100-SXM4-80GB", 2039.0, 312.0, 312.0),
    GpuSpec("A100 80GB PCIe", 1935.0, 312.0, 312.0),
    GpuSpec("A100", 1555.0, 312.0, 312.0),
    GpuSpec("L40S", 864.0, 362.0, 362.0),
    GpuSpec("L4", 300.0, 121.0, 121.0),
    GpuSpec("A10", 600.0, 125.0, 125.0),
    GpuSpec("V100", 900.0, None, 125.0),
)


def spec_for(name: str) -> GpuSpec | None:
    return next((spec for spec in SPECS if spec.match in name), None)


@dataclass
class GpuReading:
    """One rank's result: where it ran, the device, the measurements (flattened)."""

    host: str
    rank: int
    device: dict[str, Any]
    values: dict[str, float]
    seconds: float = 0.0

    @property
    def label(self) -> str:
        index = self.device.get("index")
        bus = self.device.get("bus_id")
        return f"GPU {index}" + (f" ({bus})" if bus else "") if index is not None else f"rank {self.rank} (CPU)"


@dataclass
class GpuHealth:
    readings: list[GpuReading] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def readings_from(outcome: RunOutcome, rank_hosts: Mapping[int, str]) -> GpuHealth:
    health = GpuHealth()
    for doc in outcome.results("gpu_health"):
        rank = int(doc.get("rank", -1))
        host = rank_hosts.get(rank, str(doc.get("host")))
        if "skipped" in doc:
            health.skipped[host] = str(doc["skipped"])
            continue
        m = doc.get("measurements", {})
        values = {k: float(m[k]) for k in ("memory_gbs", "h2d_gbs", "d2h_gbs") if k in m}
        values.update({f"matmul_{k}": float(v) for k, v in (m.get("matmul_tflops") or {}).items()})
        health.readings.append(GpuReading(host, rank, dict(doc.get("device", {})), values,
                                          float(doc.get("seconds", 0.0))))
    health.readings.sort(key=lambda r: r.rank)
    return health


def _facts_gpu(reading: GpuReading, facts: Mapping[str, Maybe[NodeFacts]]) -> GpuFacts | None:
    node = facts.get(reading.host)
    if node is None or not known(node) or not known(node.nvidia) or not known(node.nvidia.gpus):
        return None
    bus = str(reading.device.get("bus_id", "")).upper()
    for gpu in node.nvidia.gpus:
        if bus and gpu.bus_id.upper().endswith(bus[-7:]):
            return gpu
    uuid = reading.device.get("uuid")
    return next((gpu for gpu in node.nvidia.gpus if uuid and gpu.uuid == uuid), None)


def spec_value(reading: GpuReading, metric: str, facts: Mapping[str, Maybe[NodeFacts]]) -> tuple[float, str] | None:
    """The figure a reading is held against, and where it comes from."""
    if metric in ("h2d_gbs", "d2h_gbs"):
        gpu = _facts_gpu(reading, facts)
        if gpu is None or not (known(gpu.pcie_gen_max) and known(gpu.pcie_width_max)):
            return None
        lane = PCIE_GBS_PER_LANE.get(gpu.pcie_gen_max)
        if lane is None:
            return None
        return lane * gpu.pcie_width_max, f"PCIe gen{gpu.pcie_gen_max} x{gpu.pcie_width_max}"
    spec = spec_for(str(reading.device.get("name", "")))
    if spec is None:
        return None
    value = {"memory_gbs": spec.memory_gbs, "matmul_bfloat16": spec.bf16_tflops,
             "matmul_float16": spec.fp16_tflops}.get(metric)
    return (value, f"{spec.match} datasheet") if value else None


def judge(health: GpuHealth, facts: Mapping[str, Maybe[NodeFacts]], compare_peers: bool = True,
          require_gpu: bool = False) -> list[Finding]:
    """Stragglers against peers (same model), readings below spec, and a passing line per GPU.

    A node whose ranks saw no GPU is skipped, or with ``require_gpu`` (``bench gpu``, which was asked
    to measure GPUs) a failure saying why nothing was measured there."""
    findings: list[Finding] = []
    by_model: dict[str, list[GpuReading]] = {}
    for r in health.readings:
        by_model.setdefault(str(r.device.get("name")), []).append(r)
    medians = {(model, metric): statistics.median(values)
               for model, group in by_model.items()
               for metric in METRICS
               if len(values := [r.values[metric] for r in group if metric in r.values]) >= 2}
    for r in health.readings:
        model = str(r.device.get("name"))
        problems = 0
        for metric, value in r.values.items():
            title, unit = METRICS.get(metric, (metric, ""))
            median = medians.get((model, metric))
            if compare_peers and median and value < PEER_RATIO * median:
                problems += 1
                findings.append(Finding(
                    "gpu-straggler", Severity.WARNING, Outcome.FAIL, r.host, r.label,
                    f"{title} {value:.4g} {unit} is {value / median:.0%} of the median of {model}'s peers "
                    f"({median:.4g} {unit})",
                    "the slowest GPU sets the pace of every synchronous step",
                    "clusterkit doctor on this node (clocks, throttle reasons, PCIe width, ECC, XID); reseat or "
                    "replace the GPU, or leave the node out"))
            spec = spec_value(r, metric, facts)
            if spec and value < SPEC_RATIO.get(metric, 0.5) * spec[0]:
                problems += 1
                findings.append(Finding(
                    "gpu-below-spec", Severity.WARNING, Outcome.FAIL, r.host, r.label,
                    f"{title} {value:.4g} {unit} is {value / spec[0]:.0%} of {spec[0]:.4g} {unit} ({spec[1]})",
                    "a GPU far below its specification is throttled, misconfigured or failing",
                    "clusterkit doctor on this node: throttle reasons, clocks, power limit, PCIe link"))
        if not problems:
            shown = ", ".join(f"{METRICS.get(k, (k, ''))[0]} {v:.4g} {METRICS.get(k, ('', ''))[1]}"
                              for k, v in r.values.items())
            findings.append(Finding("gpu-health", Severity.INFO, Outcome.PASS, r.host, r.label, shown, "", ""))
    for host, why in health.skipped.items():
        if require_gpu:
            findings.append(Finding(
                "gpu-not-measured", Severity.ERROR, Outcome.FAIL, host, "",
                f"no GPU measured on {host}: {why}",
                "bench gpu measures the GPUs the training env's torch sees on each node",
                "on a GPU node: clusterkit doctor (NVIDIA driver, a CUDA build of torch in the env); "
                "without GPUs: --allow-cpu measures the CPU instead"))
        else:
            findings.append(Finding("gpu-health", Severity.INFO, Outcome.SKIP, host, "", f"skipped: {why}", "", ""))
    return findings


def table_rows(health: GpuHealth, facts: Mapping[str, Maybe[NodeFacts]]) -> list[list[str]]:
    """host, GPU, then each metric as value (share of spec)."""
    rows = []
    for r in health.readings:
        cells = [r.host, r.label]
        for metric in METRICS:
            if metric not in r.values:
                cells.append("-")
                continue
            spec = spec_value(r, metric, facts)
            share = f" ({r.values[metric] / spec[0]:.0%})" if spec else ""
            cells.append(f"{r.values[metric]:.4g}{share}")
        rows.append(cells)
    return rows


def metric_headers() -> Sequence[str]:
    return [SHORT[metric] for metric in METRICS]
