"""nccl-tests' arithmetic and text layout, shared by the collectives bench (on nodes) and clusterkit (head).

Standard library only, Python 3.8 syntax: the bench imports it as a sibling module inside the
training env, clusterkit imports it as ``clusterkit.workloads.scripts.nccl_format``.

Sizes, counts and bandwidths follow nccl-tests (``src/*.cu``: ``*GetCollByteCount`` and ``*GetBw``):

============== ============================== ===================== ===============
collective     size column (per rank)          algbw                 busbw factor
============== ============================== ===================== ===============
all_reduce     the buffer                      size / time           2(n-1)/n
all_gather     the gathered output (n chunks)  size / time           (n-1)/n
reduce_scatter the input (n chunks)            size / time           (n-1)/n
all_to_all     the send buffer (n chunks)      size / time           (n-1)/n
broadcast      the buffer                      size / time           1
============== ============================== ===================== ===============

busbw normalises algbw to what the busiest link carries in a ring, so it is comparable across
collectives and world sizes, and with the link's own rate. GB/s here are 1e9 bytes per second.
"""

# ruff: noqa: UP031  (the printf formats are nccl-tests' own, kept as written there)

from __future__ import annotations

import math
import re
from typing import Any, Iterable

#: torch's names -> nccl-tests' names, reduction shown, root shown, and the busbw factor's numerator form.
OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast")
_REDOP = {"all_reduce": "sum", "reduce_scatter": "sum"}
_ROOTED = {"broadcast"}
#: Which of nccl-tests' two variants torch can run: all_reduce and broadcast only work in place in
#: torch, all_to_all_single only out of place. A missing variant prints as blanks, as nccl-tests does
#: for a variant it does not run (``writeBenchMarkLineNullBody``).
VARIANTS = {
    "all_reduce": ("in_place",),
    "all_gather": ("out_of_place", "in_place"),
    "reduce_scatter": ("out_of_place", "in_place"),
    "all_to_all": ("out_of_place",),
    "broadcast": ("in_place",),
}
TYPE_NAMES = {"float32": "float", "float16": "half", "bfloat16": "bfloat16", "float64": "double",
              "int32": "int32", "int8": "int8", "uint8": "uint8"}
TYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int32": 4, "int8": 1, "uint8": 1}
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
_NULL_BODY = " " * 32


def bus_factor(op: str, nranks: int) -> float:
    """busbw / algbw for ``op`` on ``nranks`` ranks (nccl-tests' factors)."""
    if op not in OPS:
        raise ValueError("unknown collective {!r} (one of {})".format(op, ", ".join(OPS)))
    if op == "broadcast":
        return 1.0
    if nranks < 1:
        raise ValueError("nranks must be at least 1")
    if op == "all_reduce":
        return 2.0 * (nranks - 1) / nranks
    return float(nranks - 1) / nranks


def element_counts(op: str, size_bytes: int, elt_size: int, nranks: int) -> tuple[int, int, int]:
    """(send elements, receive elements, per-rank chunk) for a requested size, as nccl-tests sizes them.

    Chunked collectives round the per-rank chunk down to a multiple of 16 bytes.
    """
    count = size_bytes // elt_size
    if op in ("all_reduce", "broadcast"):
        return count, count, count
    base = count // nranks
    align = max(1, 16 // elt_size)
    base -= base % align
    if op == "all_gather":
        return base, base * nranks, base
    if op == "reduce_scatter":
        return base * nranks, base, base
    if op == "all_to_all":
        return base * nranks, base * nranks, base
    raise ValueError(f"unknown collective {op!r}")


def bytes_moved(op: str, chunk: int, elt_size: int, nranks: int) -> int:
    """The bytes nccl-tests divides by the time for algbw (``count * typesize [* nranks]``)."""
    if op in ("all_reduce", "broadcast"):
        return chunk * elt_size
    return chunk * elt_size * nranks


def bandwidths(op: str, chunk: int, elt_size: int, seconds: float, nranks: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s for one operation of ``chunk`` elements per rank taking ``seconds``."""
    if seconds <= 0:
        return 0.0, 0.0
    algbw = bytes_moved(op, chunk, elt_size, nranks) / 1e9 / seconds
    return algbw, algbw * bus_factor(op, nranks)


def parse_size(text: str) -> int:
    """``8``, ``64K``, ``1M``, ``2G`` (powers of 1024, as nccl-tests' -b/-e) -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text!r} (write e.g. 8, 64K, 1M, 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def size_sweep(min_bytes: int, max_bytes: int, factor: int = 2) -> list[int]:
    """min, min*factor, ... up to max (nccl-tests' -b/-e/-f)."""
    if min_bytes < 1 or max_bytes < min_bytes or factor < 2:
        raise ValueError("need 1 <= min <= max and factor >= 2")
    sizes = []
    size = min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= factor
    return sizes


def fitted_size(wanted: int, measured_size: int, seconds_per_op: float, operations: int, budget_s: float) -> int:
    """The largest message up to ``wanted`` whose ``operations`` fit in ``budget_s``, predicted from one
    operation of ``measured_size`` bytes taking ``seconds_per_op``.

    Time is scaled linearly with size: a small message is latency-bound, so this overestimates the
    time of a larger one and the prediction errs on the safe side. A shrunk size is a power of two
    (readable in the table); 0 when not even one byte fits.
    """
    if seconds_per_op <= 0 or operations <= 0:
        return wanted
    fits = measured_size * budget_s / (operations * seconds_per_op)
    if fits >= wanted:
        return wanted
    if fits < 1:
        return 0
    return 1 << (int(fits).bit_length() - 1)


def human_bytes(size: float) -> str:
    """1024-based, short: ``512 B``, ``64 KiB``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            text = (f"{size:.1f}").rstrip("0").rstrip(".")
            return f"{text} {unit}"
        size /= 1024.0
    return f"{size:g} B"


def human_share(ratio: float) -> str:
    """A ratio as a percentage that stays readable near zero: ``0.39%``, not ``0%``; ``85%``."""
    return f"{ratio * 100:.2g}%" if ratio * 100 < 1 else f"{ratio:.0%}"


def _float_str(value: float, width: int) -> str:
    """nccl-tests' getFloatStr: the most precision that fits ``width``."""
    for fmt in ("%*.2f", "%*.1f", "%*.0f"):
        text = fmt % (width, value)
        if len(text) <= width:
            return text
    return ("%*.1e" if width >= 7 else "%*.0e") % (width, value)


def header_lines() -> list[str]:
    """nccl-tests' result header (its non-per-iteration form)."""
    lines = ["#"]
    lines.append("# %10s  %12s  %8s  %6s  %6s           out-of-place                       in-place          "
                 % ("", "", "", "", ""))
    lines.append("# %10s  %12s  %8s  %6s  %6s  %7s  %6s  %6s  %6s  %7s  %6s  %6s  %6s "
                 % ("size", "count", "type", "redop", "root", "time", "algbw", "busbw", "#wrong", "time",
                    "algbw", "busbw", "#wrong"))
    lines.append("# %10s  %12s  %8s  %6s  %6s  %7s  %6s  %6s  %6s  %7s  %6s  %6s  %6s "
                 % ("(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)",
                    ""))
    return lines


def _body(variant: dict[str, Any] | None) -> str:
    if not variant:
        return _NULL_BODY
    wrong = variant.get("wrong")
    wrong_text = f"{wrong:6g}" if wrong is not None else "   N/A"
    return "  %7s  %6s  %6s  %s" % (_float_str(variant["time_us"], 7), _float_str(variant["algbw"], 6),
                                    _float_str(variant["busbw"], 6), wrong_text)


def format_row(row: dict[str, Any]) -> str:
    """One result line: size, count, type, redop, root, then out-of-place and in-place bodies.

    ``row`` is a JSON row of the bench (``size``, ``count``, ``type``, ``redop``, ``root``,
    ``out_of_place`` and ``in_place``: ``{"time_us", "algbw", "busbw", "wrong"}`` or None).
    """
    preamble = "%12i  %12i  %8s  %6s  %6s" % (int(row["size"]), int(row["count"]), row["type"], row["redop"],
                                              "%6i" % int(row["root"]))
    return (preamble + _body(row.get("out_of_place")) + _body(row.get("in_place"))).rstrip()


def row_preamble(op: str, size_bytes: int, elt_size: int, nranks: int, dtype: str) -> dict[str, Any]:
    """The size/count/type/redop/root part of a row, as nccl-tests prints it."""
    send, recv, _ = element_counts(op, size_bytes, elt_size, nranks)
    return {"size": max(send, recv) * elt_size, "count": size_bytes // elt_size,
            "type": TYPE_NAMES.get(dtype, dtype), "redop": _REDOP.get(op, "none"),
            "root": 0 if op in _ROOTED else -1}


def average_busbw(rows: Iterable[dict[str, Any]]) -> float:
    """nccl-tests' "Avg bus bandwidth": the mean busbw over every variant run of every size."""
    values = [float(variant["busbw"]) for row in rows
              for variant in (row.get("out_of_place"), row.get("in_place")) if variant]
    return sum(values) / len(values) if values else 0.0


def footer_lines(wrong_total: int, avg_busbw: float) -> list[str]:
    """nccl-tests' summary lines."""
    return ["# %-20s : %d %s" % ("Out of bounds values", wrong_total, "FAILED" if wrong_total else "OK"),
            "# %-20s : %g " % ("Avg bus bandwidth", avg_busbw), "#"]


def geometric_interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """y at ``x`` on a log-log polyline through ``points`` (sorted by x); None outside their range."""
    pts = sorted(p for p in points if p[0] > 0 and p[1] > 0)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return y0
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    if pts and x == pts[0][0]:
        return pts[0][1]
    return None
