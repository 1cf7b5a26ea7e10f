"""A step's communication under ZeRO 0-3 and ZeRO++, from collectives measured at the job's buckets."""

from __future__ import annotations

import pytest

from clusterkit.workloads.traffic import (
    JobShape,
    Point,
    bucket_advice,
    curves_from_report,
    favoured_stage,
    job_shape,
    step_traffic,
    time_at,
)

MB = 10**6


def flat(busbw_gbs: float, factor: float, sizes: list[int]) -> list[Point]:
    """A collective that reaches ``busbw`` at every size (time = size / algbw, algbw = busbw / factor)."""
    return [Point(s, s / (busbw_gbs / factor * 1e9), busbw_gbs) for s in sizes]


SIZES = [1 * MB, 10 * MB, 100 * MB, 1000 * MB]
N = 8
CURVES = {"all_reduce": flat(100.0, 2 * (N - 1) / N, SIZES),
          "all_gather": flat(80.0, (N - 1) / N, SIZES),
          "reduce_scatter": flat(80.0, (N - 1) / N, SIZES)}


def test_a_config_gives_the_buckets_in_bytes_and_auto_takes_the_hf_value() -> None:
    config = {"bf16": {"enabled": True},
              "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": 5e7}}
    shape = job_shape(config, params=7_000_000_000, hidden_size=4096)
    assert shape.dtype_bytes == 2
    assert shape.reduce_bucket == 4096 * 4096
    assert shape.prefetch_bucket == 50_000_000
    assert shape.bucket_bytes()["reduce_scatter"] == [4096 * 4096 * 2]
    assert "hidden_size^2" in shape.notes[0]
    unknown = job_shape({"zero_optimization": {"reduce_bucket_size": "auto"}}, params=10**9)
    assert unknown.reduce_bucket == 500_000_000 and "give --hf-config" in unknown.notes[0]


def test_zero3_moves_one_and_a_half_times_the_bytes_of_zero2() -> None:
    shape = JobShape(params=1_000_000_000, dtype_bytes=2, reduce_bucket=50_000_000, allgather_bucket=50_000_000,
                     prefetch_bucket=50_000_000)
    stages = {s.name: s for s in step_traffic(shape, CURVES)}
    assert set(stages) == {"ZeRO-0", "ZeRO-1", "ZeRO-2", "ZeRO-3"}
    model_bytes = 2e9
    algbw_ag = 80.0 / (7 / 8) * 1e9
    # ZeRO-2: reduce-scatter + all-gather of the model, each 20 buckets of 100 MB.
    assert stages["ZeRO-2"].seconds == pytest.approx(2 * model_bytes / algbw_ag)
    assert stages["ZeRO-3"].seconds == pytest.approx(3 * model_bytes / algbw_ag)
    # ZeRO-0: one all-reduce of the model (5e8-element buckets: 2 of 1 GB).
    assert stages["ZeRO-0"].seconds == pytest.approx(model_bytes / (100.0 / (2 * 7 / 8) * 1e9))
    term = stages["ZeRO-3"].terms[0]
    assert term.arithmetic.startswith("forward parameters: all_gather of 1.9 GiB in 20 bucket(s) of 95.4 MiB "
                                      "(stage3_prefetch_bucket_size 5e+07 x 2 B)")
    assert term.arithmetic.endswith("[measured at 95.4 MiB, busbw 80 GB/s]")  # 100 MB: a measured size
    assert favoured_stage(list(stages.values())).startswith("the network favours ZeRO-0")


def test_times_between_measured_sizes_are_interpolated_and_beyond_them_extrapolated() -> None:
    points = flat(10.0, 1.0, [1 * MB, 100 * MB])
    assert time_at(points, 1 * MB) is not None and time_at(points, 1 * MB).how == "measured at 976.6 KiB"
    mid = time_at(points, 10 * MB)
    assert mid is not None and mid.how == "interpolated" and mid.seconds == pytest.approx(10 * MB / 1e10)
    far = time_at(points, 1000 * MB)
    assert far is not None and far.how.startswith("extrapolated from 95.4 MiB")
    assert far.seconds == pytest.approx(1000 * MB / 1e10)


def test_small_buckets_are_latency_bound_and_the_advice_says_how_big_to_go() -> None:
    mib = 2**20
    curve = [Point(64 * 1024, 1e-4, 0.6), Point(mib, 2e-4, 4.4), Point(16 * mib, 1e-3, 14.7),
             Point(64 * mib, 3.8e-3, 15.5)]
    shape = JobShape(params=10**9, dtype_bytes=2, reduce_bucket=32768, allgather_bucket=16 * mib)
    advice = {a.setting: a for a in bucket_advice(shape, {"reduce_scatter": curve, "all_gather": curve})}
    message = advice["reduce_bucket_size"].message
    assert "reaches only 4% of the best reduce_scatter busbw (15.5 GB/s at 64 MiB)" in message
    assert "buckets of at least 16 MiB" in message
    assert "was not measured" in advice["allgather_bucket_size"].message


def test_zeropp_quantizes_the_forward_gather_and_keeps_the_backward_gather_in_the_node() -> None:
    shape = JobShape(params=10**9, dtype_bytes=2, prefetch_bucket=50_000_000, reduce_bucket=50_000_000,
                     quantized_weights=True, hpz_partition_size=8, quantized_gradients=True)
    node = {"all_gather": flat(300.0, 7 / 8, SIZES)}
    curves = {**CURVES, "all_to_all": flat(60.0, 7 / 8, SIZES)}
    stages = {s.name: s for s in step_traffic(shape, curves, node)}
    zpp = stages["ZeRO++"]
    assert [t.phase for t in zpp.terms] == ["forward parameters (qwZ int8)",
                                            "backward parameters (hpZ, inside the node)", "gradients (qgZ int4)"]
    assert zpp.terms[0].total_bytes == 1e9 and zpp.terms[2].total_bytes == 5e8
    assert zpp.terms[1].scope == "node"
    assert zpp.seconds is not None and stages["ZeRO-3"].seconds is not None
    assert zpp.seconds < stages["ZeRO-3"].seconds / 2
    without_node = {s.name: s for s in step_traffic(shape, curves)}["ZeRO++"]
    assert without_node.seconds is None and "not measured within a node" in without_node.terms[1].arithmetic


def test_curves_come_from_the_bench_report_out_of_place_first() -> None:
    report = {"ops": {"all_gather": {"rows": [
        {"size": 4096, "out_of_place": {"time_us": 10.0, "busbw": 0.3}, "in_place": {"time_us": 9.0, "busbw": 0.34}},
        {"size": 1024, "out_of_place": None, "in_place": {"time_us": 5.0, "busbw": 0.1}}]}}}
    assert curves_from_report(report) == {"all_gather": [Point(1024, 5e-6, 0.1), Point(4096, 1e-5, 0.3)]}
