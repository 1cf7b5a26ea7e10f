"""Typed monitor samples, decoded from the sampler's wire format (``clusterkit.node.collect.sampler``).

A field the node could not read is ``None`` here, and its reason (when the node gave one) is in
``na`` / ``gpu_na`` / ``xid_na``: a missing fact is a value, never a crash of the view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from clusterkit.node.collect.sampler import SAMPLE_MARKER, SAMPLE_PROTOCOL


class SampleError(ValueError):
    """A line that is not a sample this head can read; the message says which side to upgrade."""


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str | None = None
    uuid: str | None = None
    util_pct: float | None = None
    mem_util_pct: float | None = None
    mem_total: int | None = None
    mem_used: int | None = None
    temp_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_mhz: float | None = None
    sm_max_mhz: float | None = None
    reasons: tuple[str, ...] | None = None
    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    pcie_tx_kbs: int | None = None
    pcie_rx_kbs: int | None = None
    energy_j: float | None = None
    na: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RankSample:
    pid: int
    rank: int
    local_rank: int
    world_size: int | None
    job: str
    cmd: str
    state: str
    cpu_pct: float | None
    rss: int
    gpu: int | None
    gpu_mem: int | None


@dataclass(frozen=True)
class XidSample:
    bus_id: str
    code: int
    message: str


@dataclass(frozen=True)
class NodeSample:
    """One interval of one node, as its sampler saw it (``t`` is the node's clock)."""

    seq: int
    boot: str
    t: float
    dt: float | None
    cpu_pct: float | None
    ncpu: int
    mem_total: int | None
    mem_available: int | None
    net_rx_bps: float | None
    net_tx_bps: float | None
    gpus: tuple[GpuSample, ...]
    gpu_na: str | None
    xids: tuple[XidSample, ...]
    xid_na: str | None
    ranks: tuple[RankSample, ...]
    version: int = SAMPLE_PROTOCOL


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _pair(value: Any) -> tuple[Any, Any]:
    return (value[0], value[1]) if isinstance(value, list) and len(value) == 2 else (None, None)


def _gpu(raw: dict[str, Any]) -> GpuSample:
    mem_total, mem_used = _pair(raw.get("mem"))
    ecc_c, ecc_u = _pair(raw.get("ecc"))
    tx, rx = _pair(raw.get("pcie"))
    reasons = raw.get("reasons")
    na = raw.get("na")
    return GpuSample(
        index=int(raw["i"]), name=raw.get("name"), uuid=raw.get("uuid"),
        util_pct=_num(raw.get("util")), mem_util_pct=_num(raw.get("mutil")),
        mem_total=_int(mem_total), mem_used=_int(mem_used), temp_c=_num(raw.get("temp")),
        power_w=_num(raw.get("power")), power_limit_w=_num(raw.get("plimit")),
        sm_mhz=_num(raw.get("sm")), sm_max_mhz=_num(raw.get("smmax")),
        reasons=tuple(str(r) for r in reasons) if isinstance(reasons, list) else None,
        ecc_corrected=_int(ecc_c), ecc_uncorrected=_int(ecc_u), pcie_tx_kbs=_int(tx), pcie_rx_kbs=_int(rx),
        energy_j=_num(raw.get("energy")),
        na={str(k): str(v) for k, v in na.items()} if isinstance(na, dict) else {})


def _rank(raw: dict[str, Any]) -> RankSample:
    return RankSample(
        pid=int(raw["pid"]), rank=int(raw["rank"]), local_rank=int(raw["local"]), world_size=_int(raw.get("world")),
        job=str(raw.get("job", "?")), cmd=str(raw.get("cmd", "")), state=str(raw.get("state", "?")),
        cpu_pct=_num(raw.get("cpu")), rss=_int(raw.get("rss")) or 0, gpu=_int(raw.get("gpu")),
        gpu_mem=_int(raw.get("gmem")))


def decode_sample(raw: Any) -> NodeSample:
    """A decoded JSON sample -> ``NodeSample``; ``SampleError`` names what is wrong."""
    if not isinstance(raw, dict):
        raise SampleError("a sample must be a JSON object")
    version = raw.get("v")
    if version != SAMPLE_PROTOCOL:
        if isinstance(version, int) and version > SAMPLE_PROTOCOL:
            raise SampleError(f"the node's agent speaks sample protocol {version}, this clusterkit reads "
                              f"{SAMPLE_PROTOCOL}: upgrade clusterkit on the head")
        raise SampleError(f"the node's agent speaks sample protocol {version!r}, this clusterkit reads "
                          f"{SAMPLE_PROTOCOL}: the agent on the node is stale (it is re-shipped on reconnect)")
    try:
        mem_total, mem_available = _pair(raw.get("mem"))
        rx, tx = _pair(raw.get("net"))
        return NodeSample(
            seq=int(raw["seq"]), boot=str(raw.get("boot", "")), t=float(raw["t"]), dt=_num(raw.get("dt")),
            cpu_pct=_num(raw.get("cpu")), ncpu=_int(raw.get("ncpu")) or 0,
            mem_total=_int(mem_total), mem_available=_int(mem_available),
            net_rx_bps=_num(rx), net_tx_bps=_num(tx),
            gpus=tuple(_gpu(g) for g in raw.get("gpus") or []),
            gpu_na=raw.get("gpu_na") if isinstance(raw.get("gpu_na"), str) else None,
            xids=tuple(XidSample(str(x[0]), int(x[1]), str(x[2])) for x in raw.get("xid") or []),
            xid_na=raw.get("xid_na") if isinstance(raw.get("xid_na"), str) else None,
            ranks=tuple(_rank(r) for r in raw.get("ranks") or []),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SampleError(f"malformed sample: {type(exc).__name__}: {exc}") from None


def parse_sample_line(line: str) -> NodeSample | None:
    """A sample from one line of the agent's output; ``None`` for lines that are not samples
    (a login banner); ``SampleError`` for a sample line that cannot be read."""
    if not line.startswith(SAMPLE_MARKER):
        return None
    try:
        raw = json.loads(line[len(SAMPLE_MARKER):])
    except ValueError as exc:
        raise SampleError(f"sample line is not JSON: {exc}") from None
    return decode_sample(raw)
