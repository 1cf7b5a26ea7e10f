"""nccl-tests' arithmetic and layout as the collectives bench and clusterkit share them."""

from __future__ import annotations

import pytest

from clusterkit.workloads.scripts import nccl_format as fmt


@pytest.mark.parametrize(("op", "nranks", "factor"), [
    ("all_reduce", 8, 2 * 7 / 8), ("all_reduce", 1, 0.0), ("all_gather", 4, 3 / 4),
    ("reduce_scatter", 16, 15 / 16), ("all_to_all", 2, 1 / 2), ("broadcast", 64, 1.0),
])
def test_busbw_factors_are_nccl_tests_own(op: str, nranks: int, factor: float) -> None:
    assert fmt.bus_factor(op, nranks) == pytest.approx(factor)


def test_an_all_gather_row_is_sized_like_nccl_tests_all_gather_perf() -> None:
    # all_gather_perf -b 1M on 8 ranks of float: a 32768-element chunk per rank, the gathered buffer printed.
    send, recv, chunk = fmt.element_counts("all_gather", 1 << 20, 4, 8)
    assert (send, recv, chunk) == (32768, 262144, 32768)
    row = fmt.row_preamble("all_gather", 1 << 20, 4, 8, "float32")
    assert row == {"size": 1 << 20, "count": 262144, "type": "float", "redop": "none", "root": -1}
    algbw, busbw = fmt.bandwidths("all_gather", chunk, 4, 1e-3, 8)
    assert algbw == pytest.approx(1.048576)  # chunk * 4 B * 8 ranks / 1 ms
    assert busbw == pytest.approx(1.048576 * 7 / 8)


def test_chunks_round_down_to_16_bytes_per_rank() -> None:
    # 1000 B of float: 250 elements, 83 per rank, 80 once a chunk is a multiple of 16 bytes.
    assert fmt.element_counts("reduce_scatter", 1000, 4, 3) == (240, 80, 80)
    assert fmt.element_counts("all_to_all", 64, 2, 8) == (0, 0, 0)


def test_a_row_prints_in_nccl_tests_columns_with_blanks_for_a_variant_torch_lacks() -> None:
    row = {**fmt.row_preamble("all_reduce", 8 << 20, 4, 2, "float32"), "out_of_place": None,
           "in_place": {"time_us": 1234.5678, "algbw": 6.79, "busbw": 6.79, "wrong": 0}}
    line = fmt.format_row(row)
    assert line == ("     8388608       2097152     float     sum      -1" + " " * 32
                    + "  1234.57    6.79    6.79       0")
    fields = line.split()
    assert fields[:5] == ["8388608", "2097152", "float", "sum", "-1"]
    assert fmt.header_lines()[2].split() == ["#", "size", "count", "type", "redop", "root", "time", "algbw",
                                             "busbw", "#wrong", "time", "algbw", "busbw", "#wrong"]


def test_wide_values_lose_decimals_then_go_exponential_like_nccl_tests() -> None:
    assert fmt._float_str(12.345, 6) == " 12.35"
    assert fmt._float_str(1234.56, 6) == "1234.6"
    assert fmt._float_str(123456.7, 6) == "123457"
    assert fmt._float_str(12345678.0, 7) == "1.2e+07"


def test_unchecked_results_read_na_and_the_footer_sums_up() -> None:
    row = {**fmt.row_preamble("broadcast", 4096, 4, 4, "float32"), "out_of_place": None,
           "in_place": {"time_us": 10.0, "algbw": 0.41, "busbw": 0.41, "wrong": None}}
    assert fmt.format_row(row).endswith("N/A")
    assert fmt.average_busbw([row]) == pytest.approx(0.41)
    assert fmt.footer_lines(3, 0.41)[0] == "# Out of bounds values : 3 FAILED"


@pytest.mark.parametrize(("text", "size"), [("8", 8), ("64K", 65536), ("1M", 1 << 20), ("2g", 2 << 30),
                                            ("1.5M", 1572864), ("4MiB", 4 << 20)])
def test_sizes_parse_with_powers_of_1024(text: str, size: int) -> None:
    assert fmt.parse_size(text) == size


def test_a_bad_size_is_refused_with_an_example() -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 8, 64K"):
        fmt.parse_size("lots")


def test_a_sweep_multiplies_up_to_the_maximum() -> None:
    assert fmt.size_sweep(1024, 16384, 4) == [1024, 4096, 16384]
    assert fmt.size_sweep(1024, 20000, 4) == [1024, 4096, 16384]


def test_interpolation_is_log_log_between_measured_points() -> None:
    points = [(1e3, 1.0), (1e5, 100.0)]
    assert fmt.geometric_interpolate(points, 1e4) == pytest.approx(10.0)
    assert fmt.geometric_interpolate(points, 1e3) == pytest.approx(1.0)
    assert fmt.geometric_interpolate(points, 1e6) is None


# issue 19, W8: a pair on a slow link measures the size that fits its deadline, not a timeout.
def test_a_size_that_fits_the_budget_is_kept() -> None:
    # 256 KiB took 1 ms: 64 MiB x 7 operations takes ~1.8 s, well within 60 s.
    assert fmt.fitted_size(64 << 20, 256 << 10, 0.001, 7, 60.0) == 64 << 20


def test_a_size_that_would_not_fit_shrinks_to_the_largest_power_of_two_that_does() -> None:
    # 40 Mbit/s: 256 KiB in 0.052 s; 7 operations in 15 s allow ~10.3 MiB, so 8 MiB.
    assert fmt.fitted_size(64 << 20, 256 << 10, 0.052, 7, 15.0) == 8 << 20


def test_nothing_fits_when_the_budget_is_spent() -> None:
    assert fmt.fitted_size(64 << 20, 256 << 10, 0.5, 7, 0.0) == 0


def test_shares_stay_readable_near_zero() -> None:
    assert fmt.human_share(0.0039) == "0.39%"
    assert fmt.human_share(0.85) == "85%"
