"""busbw against message size, in the terminal and as a PNG beside the JSON."""

from __future__ import annotations

from pathlib import Path

from clusterkit.workloads.plot import busbw_series, save_png, terminal_plot

SERIES = {"all_reduce": [(1024, 0.01), (1 << 20, 0.5), (1 << 24, 1.0)],
          "all_gather": [(1024, 0.02), (1 << 20, 0.3), (1 << 24, 0.6)]}


def test_the_terminal_plot_puts_big_messages_right_high_busbw_up_and_the_expectation_as_a_line() -> None:
    lines = terminal_plot(SERIES, expected=1.25, width=40, height=10)
    grid = lines[1:11]
    assert all(len(line) == len(grid[0]) for line in grid)
    top_star = min(i for i, line in enumerate(grid) if "*" in line)
    assert grid[top_star].rstrip().endswith("*")  # all_reduce's best point: the largest size, at the right
    expectation_rows = [i for i, line in enumerate(grid) if "=" * 10 in line]
    assert expectation_rows and expectation_rows[0] < top_star  # 1.25 GB/s is above every measurement
    assert lines[-2].strip().startswith("1 KiB") and lines[-2].strip().endswith("16 MiB")
    assert "* all_reduce" in lines[-1] and "o all_gather" in lines[-1] and "= expected 1.25 GB/s" in lines[-1]


def test_nothing_measured_is_said_not_drawn() -> None:
    assert terminal_plot({"all_reduce": []}) == ["busbw (GB/s) by message size: nothing measured"]


def test_the_png_is_written_beside_the_json(tmp_path: Path) -> None:
    path = save_png(SERIES, tmp_path / "sweep.png", expected=1.25, title="3 ranks, gloo")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


def test_series_take_the_better_variant_of_each_row() -> None:
    report = {"ops": {"all_gather": {"rows": [
        {"size": 4096, "out_of_place": {"busbw": 0.3}, "in_place": {"busbw": 0.34}},
        {"size": 8192, "out_of_place": None, "in_place": {"busbw": 0.5}}]}}}
    assert busbw_series(report) == {"all_gather": [(4096, 0.34), (8192, 0.5)]}
