"""busbw against message size, one curve per collective, the expectation as a line: in the terminal and as a PNG.

People read a sweep from its curve (where it leaves the latency floor, where it flattens, how far
below the line it stays), so both drawings show the same thing: message size on a log2 axis,
busbw on a linear axis from zero, the expected busbw of the topology as a horizontal line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from clusterkit.workloads.scripts.nccl_format import human_bytes

MARKERS = {"all_reduce": "*", "all_gather": "o", "reduce_scatter": "x", "all_to_all": "+", "broadcast": "#"}
Series = Mapping[str, Sequence[tuple[int, float]]]


def terminal_plot(series: Series, expected: float | None = None, width: int = 60, height: int = 14,
                  title: str = "busbw (GB/s) by message size") -> list[str]:
    """Text lines of the plot; each collective has its marker, ``=`` marks the expectation."""
    points = [(size, bw) for pts in series.values() for size, bw in pts if size > 0]
    if not points:
        return [f"{title}: nothing measured"]
    x_lo = math.log2(min(s for s, _ in points))
    x_hi = math.log2(max(s for s, _ in points))
    y_hi = max([bw for _, bw in points] + ([expected] if expected else [])) * 1.05 or 1.0
    grid = [[" "] * width for _ in range(height)]

    def column(size: int) -> int:
        if x_hi == x_lo:
            return width // 2
        return round((math.log2(size) - x_lo) / (x_hi - x_lo) * (width - 1))

    def row(value: float) -> int:
        return height - 1 - min(height - 1, max(0, round(value / y_hi * (height - 1))))

    if expected:
        for x in range(width):
            grid[row(expected)][x] = "="
    for op, pts in series.items():
        mark = MARKERS.get(op, "?")
        for size, bw in pts:
            if size > 0:
                grid[row(bw)][column(size)] = mark
    label_width = max(len(f"{y_hi:.3g}"), 5)
    lines = [title]
    for y in range(height):
        value = y_hi * (height - 1 - y) / (height - 1)
        label = f"{value:.3g}" if y in (0, height // 2, height - 1) else ""
        lines.append(f"{label:>{label_width}} |" + "".join(grid[y]))
    lines.append(" " * label_width + " +" + "-" * width)
    left, right = human_bytes(2 ** x_lo), human_bytes(2 ** x_hi)
    lines.append(" " * (label_width + 2) + left + right.rjust(width - len(left)))
    legend = "   ".join(f"{MARKERS.get(op, '?')} {op}" for op in series)
    if expected:
        legend += f"   = expected {expected:.3g} GB/s"
    lines.append(" " * (label_width + 2) + legend)
    return lines


def save_png(series: Series, path: Path, expected: float | None = None, title: str = "") -> Path:
    """Draw the same plot with matplotlib (Agg: no display needed) into ``path``."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    try:
        for op, pts in series.items():
            shown = [(s, bw) for s, bw in pts if s > 0]
            if shown:
                ax.plot([s for s, _ in shown], [bw for _, bw in shown], marker="o", markersize=3, label=op)
        if expected:
            ax.axhline(expected, linestyle="--", color="grey", label=f"expected {expected:.3g} GB/s")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: human_bytes(x)))
        ax.set_ylim(bottom=0)
        ax.set_xlabel("message size (bytes, nccl-tests' size column)")
        ax.set_ylabel("busbw (GB/s)")
        ax.set_title(title or "busbw by message size")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def busbw_series(report: Mapping[str, object]) -> dict[str, list[tuple[int, float]]]:
    """op -> (size, busbw) from a collectives report: the better of the two variants at each size."""
    series: dict[str, list[tuple[int, float]]] = {}
    ops = report.get("ops")
    if not isinstance(ops, Mapping):
        return series
    for op, body in ops.items():
        pts = []
        for r in body.get("rows", []):
            values = [v["busbw"] for v in (r.get("out_of_place"), r.get("in_place")) if v]
            if values:
                pts.append((int(r["size"]), float(max(values))))
        series[str(op)] = pts
    return series
