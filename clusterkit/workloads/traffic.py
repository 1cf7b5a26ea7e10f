"""A training step's communication time under ZeRO 0-3 (and ZeRO++), from collectives measured at the job's buckets.

Per step, with P parameters of b bytes (2 for bf16/fp16, 4 for fp32) and DeepSpeed's bucket sizes
(elements, from the config or DeepSpeed's defaults):

- ZeRO-0: gradients all-reduced in buckets of 5e8 elements (``engine.allreduce_gradients``).
- ZeRO-1/2: gradients reduce-scattered in buckets of ``reduce_bucket_size``, then the updated
  parameters all-gathered in buckets of ``allgather_bucket_size``: the same bytes as an all-reduce,
  in two collectives that reach their own busbw.
- ZeRO-3: parameters all-gathered in the forward pass and again in the backward pass (buckets of
  ``stage3_prefetch_bucket_size``), gradients reduce-scattered (``reduce_bucket_size``): 1.5x the bytes.
- ZeRO++ (where the config turns it on): qwZ all-gathers int8 weights in the forward pass (half the
  bytes of bf16); hpZ keeps a secondary copy of the weights inside each node so the backward
  all-gather stays in the node; qgZ reduce-scatters int4 gradients through all-to-all (a quarter).

Each collective's time for a bucket is read off the measured sweep: measured at that size, or
interpolated (log-log) between measured sizes, or, beyond the largest, extrapolated at the
largest's bandwidth (and said so). Overlap with compute is not modelled: this is the time the
network needs, the floor a step cannot go below when communication is exposed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clusterkit.workloads.scripts.nccl_format import geometric_interpolate, human_bytes

DEFAULT_ALLREDUCE_BUCKET = 500_000_000  # deepspeed.runtime.engine.MEMORY_OPT_ALLREDUCE_SIZE
DEFAULT_REDUCE_BUCKET = 500_000_000
DEFAULT_ALLGATHER_BUCKET = 500_000_000
DEFAULT_PREFETCH_BUCKET = 50_000_000
#: A bucket whose busbw is below this share of the best measured busbw is worth raising.
BUCKET_EFFICIENCY = 0.8
KNEE = 0.9


@dataclass(frozen=True)
class Point:
    """One measured size of one collective (nccl-tests' size column) and its time."""

    size: int
    seconds: float
    busbw: float


Curves = Mapping[str, list[Point]]


def curves_from_report(report: Mapping[str, Any], scope_key: str = "ops") -> dict[str, list[Point]]:
    """op -> measured points (out-of-place where torch has it, else in-place) from a collectives report."""
    curves: dict[str, list[Point]] = {}
    for op, body in (report.get(scope_key) or {}).items():
        points = []
        for row in body.get("rows", []):
            variant = row.get("out_of_place") or row.get("in_place")
            if variant and variant.get("time_us", 0) > 0:
                points.append(Point(int(row["size"]), variant["time_us"] / 1e6, float(variant["busbw"])))
        curves[op] = sorted(points, key=lambda p: p.size)
    return curves


@dataclass(frozen=True)
class Lookup:
    seconds: float
    how: str


def time_at(points: list[Point], size: float) -> Lookup | None:
    """The time of one collective of ``size`` bytes, read off the measured points."""
    if not points or size <= 0:
        return None
    for p in points:
        if abs(p.size - size) <= max(16, 0.01 * size):
            return Lookup(p.seconds * size / p.size, f"measured at {human_bytes(p.size)}")
    value = geometric_interpolate([(float(p.size), p.seconds) for p in points], size)
    if value is not None:
        return Lookup(value, "interpolated")
    largest, smallest = points[-1], points[0]
    if size > largest.size:
        return Lookup(largest.seconds * size / largest.size,
                      f"extrapolated from {human_bytes(largest.size)} at its bandwidth")
    return Lookup(smallest.seconds, f"at least the {human_bytes(smallest.size)} latency")


@dataclass(frozen=True)
class Term:
    """One collective of a step: ``total_bytes`` moved as buckets of ``bucket_bytes``."""

    phase: str
    op: str
    total_bytes: float
    bucket_bytes: float
    seconds: float | None
    arithmetic: str
    scope: str = "world"


@dataclass
class StageTraffic:
    name: str
    terms: list[Term] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        if any(t.seconds is None for t in self.terms):
            return None
        return sum(t.seconds for t in self.terms if t.seconds is not None)


@dataclass(frozen=True)
class JobShape:
    """What the model of a step needs from the job: model size, dtype and DeepSpeed's buckets (elements)."""

    params: int
    dtype_bytes: int
    allreduce_bucket: int = DEFAULT_ALLREDUCE_BUCKET
    reduce_bucket: int = DEFAULT_REDUCE_BUCKET
    allgather_bucket: int = DEFAULT_ALLGATHER_BUCKET
    prefetch_bucket: int = DEFAULT_PREFETCH_BUCKET
    quantized_weights: bool = False
    hpz_partition_size: int = 1
    quantized_gradients: bool = False
    notes: tuple[str, ...] = ()

    @property
    def zeropp(self) -> bool:
        return self.quantized_weights or self.hpz_partition_size > 1 or self.quantized_gradients

    def bucket_bytes(self) -> dict[str, list[int]]:
        """op -> the bucket sizes in bytes the job's collectives use (what to measure)."""
        b, p = self.dtype_bytes, self.params
        sizes = {"all_reduce": [min(self.allreduce_bucket, p) * b],
                 "reduce_scatter": sorted({min(self.reduce_bucket, p) * b}),
                 "all_gather": sorted({min(self.allgather_bucket, p) * b, min(self.prefetch_bucket, p) * b})}
        if self.quantized_weights:
            sizes["all_gather"] = sorted(set(sizes["all_gather"]) | {min(self.prefetch_bucket, p)})
        if self.quantized_gradients:
            sizes["all_to_all"] = [max(16, min(self.reduce_bucket, p) * b // 4)]
        return sizes


#: What the HF Trainer puts for ``"auto"`` bucket sizes, from the model's hidden size
#: (transformers.integrations.deepspeed.HfTrainerDeepSpeedConfig.trainer_config_finalize).
HF_AUTO = {"reduce_bucket_size": 1.0, "stage3_prefetch_bucket_size": 0.9}


def job_shape(config: Mapping[str, Any], params: int, hidden_size: int | None = None) -> JobShape:
    """The job's shape from a DeepSpeed config dict; missing keys take DeepSpeed's defaults, ``"auto"``
    the HF Trainer's value when the hidden size is known (else DeepSpeed's default, said in the notes)."""
    zero = config.get("zero_optimization") or {}
    notes: list[str] = []

    def number(key: str, default: int) -> int:
        value = zero.get(key, default)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return int(value)
        if value == "auto" and hidden_size and key in HF_AUTO:
            resolved = int(HF_AUTO[key] * hidden_size * hidden_size)
            notes.append(f"{key} \"auto\" = {HF_AUTO[key]:g} x hidden_size^2 = {resolved:.3g} "
                         "(as the HF Trainer sets it)")
            return resolved
        if value == "auto":
            notes.append(f"{key} is \"auto\": DeepSpeed's default {default:.3g} used (the HF Trainer fills it from "
                         "the model's hidden size: give --hf-config)")
        return default

    half = any((config.get(key) or {}).get("enabled") is True for key in ("bf16", "fp16", "bfloat16"))
    return JobShape(
        params=params, dtype_bytes=2 if half else 4,
        reduce_bucket=number("reduce_bucket_size", DEFAULT_REDUCE_BUCKET),
        allgather_bucket=number("allgather_bucket_size", DEFAULT_ALLGATHER_BUCKET),
        prefetch_bucket=number("stage3_prefetch_bucket_size", DEFAULT_PREFETCH_BUCKET),
        quantized_weights=zero.get("zero_quantized_weights") is True,
        hpz_partition_size=int(zero.get("zero_hpz_partition_size") or 1),
        quantized_gradients=zero.get("zero_quantized_gradients") is True,
        notes=tuple(notes))


def _term(phase: str, op: str, total: float, bucket: float, curves: Curves, setting: str,
          scope: str = "world") -> Term:
    bucket = min(bucket, total)
    points = curves.get(op, [])
    full = math.floor(total / bucket) if bucket > 0 else 0
    rest = total - full * bucket
    one = time_at(points, bucket)
    last = time_at(points, rest) if rest > 0 else Lookup(0.0, "")
    if one is None or last is None:
        return Term(phase, op, total, bucket, None,
                    f"{phase}: {op} of {human_bytes(total)} in buckets of {human_bytes(bucket)} ({setting}): "
                    f"{op} not measured" + (" within a node" if scope == "node" else ""), scope)
    seconds = full * one.seconds + last.seconds
    busbw = next((p.busbw for p in points if abs(p.size - bucket) <= max(16, 0.01 * bucket)), None)
    shown = f", busbw {busbw:.3g} GB/s" if busbw is not None else ""
    arithmetic = (f"{phase}: {op} of {human_bytes(total)} in {full} bucket(s) of {human_bytes(bucket)} ({setting})"
                  + (f" + one of {human_bytes(rest)}" if rest > 0 else "")
                  + f": {full} x {one.seconds * 1e3:.3g} ms" + (f" + {last.seconds * 1e3:.3g} ms" if rest > 0 else "")
                  + f" = {seconds * 1e3:.4g} ms  [{one.how}{shown}]")
    return Term(phase, op, total, bucket, seconds, arithmetic, scope)


def step_traffic(shape: JobShape, curves: Curves, node_curves: Curves | None = None) -> list[StageTraffic]:
    """Communication per step for ZeRO-0..3 (and ZeRO++ when the config enables any of it)."""
    b, p = shape.dtype_bytes, shape.params
    model = float(p * b)
    sized = f"{p:.3g} params x {b} B"
    stages = [
        StageTraffic("ZeRO-0", [_term("gradients", "all_reduce", model, shape.allreduce_bucket * b, curves,
                                      f"allreduce bucket {shape.allreduce_bucket:.3g} x {b} B")]),
    ]
    for name in ("ZeRO-1", "ZeRO-2"):
        stages.append(StageTraffic(name, [
            _term("gradients", "reduce_scatter", model, shape.reduce_bucket * b, curves,
                  f"reduce_bucket_size {shape.reduce_bucket:.3g} x {b} B"),
            _term("updated parameters", "all_gather", model, shape.allgather_bucket * b, curves,
                  f"allgather_bucket_size {shape.allgather_bucket:.3g} x {b} B")]))
    prefetch = shape.prefetch_bucket * b
    stages.append(StageTraffic("ZeRO-3", [
        _term("forward parameters", "all_gather", model, prefetch, curves,
              f"stage3_prefetch_bucket_size {shape.prefetch_bucket:.3g} x {b} B"),
        _term("backward parameters", "all_gather", model, prefetch, curves,
              f"stage3_prefetch_bucket_size {shape.prefetch_bucket:.3g} x {b} B"),
        _term("gradients", "reduce_scatter", model, shape.reduce_bucket * b, curves,
              f"reduce_bucket_size {shape.reduce_bucket:.3g} x {b} B")]))
    for stage in stages:
        stage.notes.append(f"model {sized} = {human_bytes(model)}")
    if shape.zeropp:
        stages.append(_zeropp(shape, curves, node_curves or {}))
    return stages


def _zeropp(shape: JobShape, curves: Curves, node_curves: Curves) -> StageTraffic:
    b, p = shape.dtype_bytes, shape.params
    model = float(p * b)
    stage = StageTraffic("ZeRO++")
    if shape.quantized_weights:
        stage.terms.append(_term("forward parameters (qwZ int8)", "all_gather", float(p), float(shape.prefetch_bucket),
                                 curves, f"stage3_prefetch_bucket_size {shape.prefetch_bucket:.3g} x 1 B"))
    else:
        stage.terms.append(_term("forward parameters", "all_gather", model, float(shape.prefetch_bucket * b), curves,
                                 f"stage3_prefetch_bucket_size {shape.prefetch_bucket:.3g} x {b} B"))
    if shape.hpz_partition_size > 1:
        stage.terms.append(_term("backward parameters (hpZ, inside the node)", "all_gather", model,
                                 float(shape.prefetch_bucket * b), node_curves,
                                 f"zero_hpz_partition_size {shape.hpz_partition_size}", scope="node"))
    else:
        stage.terms.append(_term("backward parameters", "all_gather", model, float(shape.prefetch_bucket * b), curves,
                                 f"stage3_prefetch_bucket_size {shape.prefetch_bucket:.3g} x {b} B"))
    if shape.quantized_gradients:
        stage.terms.append(_term("gradients (qgZ int4)", "all_to_all", model / 4, shape.reduce_bucket * b / 4, curves,
                                 f"reduce_bucket_size {shape.reduce_bucket:.3g} x 0.5 B"))
        stage.notes.append("qgZ's second, intra-node all-to-all is not counted")
    else:
        stage.terms.append(_term("gradients", "reduce_scatter", model, float(shape.reduce_bucket * b), curves,
                                 f"reduce_bucket_size {shape.reduce_bucket:.3g} x {b} B"))
    return stage


@dataclass(frozen=True)
class BucketAdvice:
    op: str
    setting: str
    bucket_bytes: float
    busbw: float | None
    peak_busbw: float
    knee_bytes: int
    message: str


def bucket_advice(shape: JobShape, curves: Curves) -> list[BucketAdvice]:
    """For each bucket setting: its busbw against the best measured, and the smallest size near the peak."""
    b = shape.dtype_bytes
    settings = [("reduce_scatter", "reduce_bucket_size", shape.reduce_bucket),
                ("all_gather", "allgather_bucket_size", shape.allgather_bucket),
                ("all_gather", "stage3_prefetch_bucket_size", shape.prefetch_bucket)]
    advice = []
    for op, setting, elements in settings:
        points = curves.get(op, [])
        if not points:
            continue
        peak = max(points, key=lambda pt: pt.busbw)
        knee = next((pt for pt in points if pt.busbw >= KNEE * peak.busbw), peak)
        bucket = float(min(elements, shape.params) * b)
        at = next((pt.busbw for pt in points if abs(pt.size - bucket) <= max(16, 0.01 * bucket)), None)
        if at is None:
            message = f"{setting}: {human_bytes(bucket)} was not measured"
        elif at >= BUCKET_EFFICIENCY * peak.busbw:
            message = (f"{setting} {elements:.3g} ({human_bytes(bucket)}) reaches {at / peak.busbw:.0%} of the best "
                       f"{op} busbw ({peak.busbw:.3g} GB/s at {human_bytes(peak.size)}): fine")
        else:
            message = (f"{setting} {elements:.3g} ({human_bytes(bucket)}) reaches only {at / peak.busbw:.0%} of the "
                       f"best {op} busbw ({peak.busbw:.3g} GB/s at {human_bytes(peak.size)}): buckets of at least "
                       f"{human_bytes(knee.size)} ({knee.size // b:.3g} elements) reach {KNEE:.0%} of it")
        advice.append(BucketAdvice(op, setting, bucket, at, peak.busbw, knee.size, message))
    return advice


def favoured_stage(stages: list[StageTraffic]) -> str:
    """One sentence: the stage with the least communication, and what the others cost on top."""
    timed = [(s.seconds, s.name) for s in stages if s.seconds is not None]
    if not timed:
        return "no stage could be timed: a collective it needs was not measured"
    best_s, best = min(timed)
    others = ", ".join(f"{name} +{(sec - best_s) * 1e3:.3g} ms" for sec, name in sorted(timed) if name != best)
    return f"the network favours {best} ({best_s * 1e3:.4g} ms of communication per step)" + (
        f"; {others}" if others else "")
