"""Judging what the workloads report: GPUs against the datasheet and their peers, the ZeRO suite's checks.

The inputs are result documents in the scripts' own format (``@@ck-result@@`` payloads).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from clusterkit.commands.bench_traffic import measured_sizes
from clusterkit.workloads.gpu_health import GpuHealth, GpuReading, judge, spec_for
from clusterkit.workloads.run import LogLine, RunOutcome
from clusterkit.workloads.traffic import JobShape
from clusterkit.workloads.zero_suite import judge as judge_zero
from tests.factories import healthy_gpu_node

H200 = "NVIDIA H200"


def reading(host: str, rank: int, index: int, **values: float) -> GpuReading:
    base = {"memory_gbs": 4300.0, "matmul_bfloat16": 700.0, "matmul_float16": 720.0, "h2d_gbs": 52.0,
            "d2h_gbs": 53.0}
    base.update(values)
    device = {"kind": "cuda", "name": H200, "index": index, "bus_id": f"00000000:{0x18 + index:02X}:00.0"}
    return GpuReading(host, rank, device, base)


def test_datasheets_match_the_most_specific_name_first() -> None:
    spec = spec_for("NVIDIA H100 PCIe")
    assert spec is not None and spec.match == "H100 PCIe" and spec.memory_gbs == 2000.0
    assert spec_for("NVIDIA H100 80GB HBM3").match == "H100"  # type: ignore[union-attr]
    assert spec_for("NVIDIA GH200 480GB").match == "GH200"  # type: ignore[union-attr]
    assert spec_for("Tesla T4") is None


def test_a_gpu_far_below_its_peers_is_a_straggler_even_within_its_datasheet() -> None:
    health = GpuHealth([reading("n1", 0, 0), reading("n1", 1, 1), reading("n2", 2, 0),
                        reading("n2", 3, 1, matmul_bfloat16=540.0)])
    findings = judge(health, {})
    failed = [(f.check_id, f.host, f.where) for f in findings if f.outcome.value == "fail"]
    assert failed == [("gpu-straggler", "n2", "GPU 1 (00000000:19:00.0)")]
    message = next(f.message for f in findings if f.check_id == "gpu-straggler")
    assert message == "bf16 matmul 540 TFLOPS is 77% of the median of NVIDIA H200's peers (700 TFLOPS)"
    assert sum(1 for f in findings if f.check_id == "gpu-health" and f.outcome.value == "pass") == 3


def test_readings_far_below_the_datasheet_or_the_pcie_link_are_flagged() -> None:
    node = healthy_gpu_node(8)  # Gen5 x16 GPUs: 63 GB/s per direction
    facts: Any = {"n1": node}
    bus = node.nvidia.gpus[0].bus_id  # type: ignore[union-attr]
    slow = reading("n1", 0, 0, memory_gbs=2000.0, h2d_gbs=12.0)
    slow.device["bus_id"] = bus
    findings = judge(GpuHealth([slow]), facts)
    below = {f.message.split(" is ")[0]: f.message for f in findings if f.check_id == "gpu-below-spec"}
    assert set(below) == {"device memory bandwidth 2000 GB/s", "pinned host-to-device copy 12 GB/s"}
    assert "of 4800 GB/s (H200 datasheet)" in below["device memory bandwidth 2000 GB/s"]
    assert "of 63.01 GB/s (PCIe gen5 x16)" in below["pinned host-to-device copy 12 GB/s"]


def test_a_node_without_cuda_is_skipped_not_failed() -> None:
    findings = judge(GpuHealth([], {"cpu1": "no CUDA device visible to torch 2.13.0+cpu (cuda None)"}), {})
    assert [(f.check_id, f.outcome.value, f.host) for f in findings] == [("gpu-health", "skip", "cpu1")]


# issue 19, M6: bench gpu was asked to measure GPUs; a node where none was measured says why, as a failure.
def test_a_node_without_cuda_fails_when_a_gpu_is_required_and_says_how_to_measure_the_cpu() -> None:
    why = "no CUDA device visible to torch 2.13.0+cpu (cuda None)"
    findings = judge(GpuHealth([reading("gpu1", 0, 0)], {"cpu1": why}), {}, require_gpu=True)
    failed = [f for f in findings if f.outcome.value == "fail"]
    assert [(f.check_id, f.host, f.is_error) for f in failed] == [("gpu-not-measured", "cpu1", True)]
    assert why in failed[0].message
    assert "--allow-cpu" in failed[0].fix
    assert ("gpu-health", "gpu1", "pass") in [(f.check_id, f.host, f.outcome.value) for f in findings]


SUITE: dict[str, Any] = {
    "world_size": 3, "precision": "fp32", "steps": 2,
    "loss_agreement": {"reference": "0", "tolerance": 1e-4, "agree": True,
                       "stages": {"0": 0.0, "1": 1e-7, "3o": 2e-7}},
    "stages": [
        {"stage": "0", "name": "ZeRO-0", "losses": [0.41, 0.39], "checkpoint": {
            "loaded": True, "max_abs_diff": 0.0, "next_loss_live": 0.37, "next_loss_loaded": 0.37}},
        {"stage": "1", "name": "ZeRO-1", "losses": [0.41, 0.39], "checkpoint": {
            "loaded": True, "max_abs_diff": 0.0, "next_loss_live": 0.37, "next_loss_loaded": 0.37},
         "zero_to_fp32": {"max_abs_diff": 0.0, "shards_copied_to_rank0": 2}},
        {"stage": "3o", "name": "ZeRO-3 + CPU offload", "losses": [0.41, 0.39], "checkpoint": {
            "loaded": True, "max_abs_diff": 0.0, "next_loss_live": 0.37, "next_loss_loaded": 0.37},
         "zero_to_fp32": {"max_abs_diff": 0.0}, "save_16bit": {"max_abs_diff": 0.0}},
    ]}


def test_a_clean_suite_passes_every_stage() -> None:
    findings = judge_zero(SUITE)
    assert [(f.check_id, f.outcome.value) for f in findings] == [("zero-stage", "pass")] * 3
    assert findings[2].message == ("ZeRO-3 + CPU offload: 2 steps, final loss 0.39; checkpoint reload, "
                                   "zero_to_fp32, save_16bit match the live weights")


def test_losses_that_disagree_and_weights_that_do_not_come_back_are_errors() -> None:
    broken = copy.deepcopy(SUITE)
    broken["loss_agreement"]["stages"]["1"] = 3e-3
    broken["loss_agreement"]["agree"] = False
    broken["stages"][2]["zero_to_fp32"]["max_abs_diff"] = 0.02
    broken["stages"][0]["checkpoint"]["next_loss_loaded"] = 0.5
    found = {(f.check_id, f.where) for f in judge_zero(broken) if f.outcome.value == "fail"}
    assert found == {("zero-loss-mismatch", "ZeRO-1"), ("zero-to-fp32-mismatch", "ZeRO-3 + CPU offload"),
                     ("zero-checkpoint-mismatch", "ZeRO-0")}


def test_a_stage_that_raised_is_reported_with_its_error() -> None:
    failed = copy.deepcopy(SUITE)
    failed["stages"][1] = {"stage": "1", "name": "ZeRO-1", "error": "RuntimeError: boom"}
    assert [(f.check_id, f.message) for f in judge_zero(failed) if f.outcome.value == "fail"] == [
        ("zero-stage-failed", "ZeRO-1 failed: RuntimeError: boom")]


def test_the_traffic_measurement_covers_every_bucket_and_a_sweep_up_to_the_largest() -> None:
    shape = JobShape(params=10**8, dtype_bytes=2, reduce_bucket=5 * 10**6, allgather_bucket=2 * 10**7,
                     prefetch_bucket=10**6)
    ops, sizes = measured_sizes(shape, max_bytes=1 << 30)
    assert ops == ["all_reduce", "reduce_scatter", "all_gather"]
    assert {10**7, 4 * 10**7, 2 * 10**6, 2 * 10**8} <= set(sizes)
    assert 64 * 1024 in sizes and max(sizes) == 2 * 10**8
    assert max(measured_sizes(shape, max_bytes=1 << 20)[1]) == 1 << 20


def test_a_result_line_survives_the_trip_through_pdsh() -> None:
    payload = {"kind": "gpu_health", "rank": 3, "device": {"name": H200}}
    raw = "node2: [ck:rank=3] @@ck-result@@ " + json.dumps(payload)
    from clusterkit.workloads.run import split_line

    node, rank, text = split_line(raw, ["node1", "node2"])
    outcome = RunOutcome(["deepspeed"], "abc", 0, 1.0, [LogLine(0.1, "out", node, rank, text, raw)])
    assert outcome.results("gpu_health") == [payload]
