"""Every ``clusterkit bench`` flag checked before anything is surveyed or launched.

A value the workload scripts cannot run with (``--iters 0``, ``--step-factor 1``, a sweep whose
smallest message is larger than its largest) would otherwise reach the ranks, crash them there and
come back as a launcher failure. Here it is a usage error (exit 2) naming the flag, one line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from clusterkit.errors import UsageError
from clusterkit.workloads.scripts.nccl_format import OPS, TYPE_SIZES, parse_size


@dataclass(frozen=True)
class Bound:
    """The range a numeric flag accepts: ``low <= value`` (``low < value`` when ``above``), ``value <= high``."""

    flag: str
    low: float
    above: bool = False
    high: float | None = None
    meaning: str = ""

    def problem(self, value: float) -> str | None:
        shown = f"{self.flag} {value:g}"
        why = f" ({self.meaning})" if self.meaning else ""
        if self.above and not value > self.low:
            return f"{shown}: must be more than {self.low:g}{why}"
        if not self.above and value < self.low:
            return f"{shown}: must be at least {self.low:g}{why}"
        if self.high is not None and value > self.high:
            return f"{shown}: must be at most {self.high:g}{why}"
        return None


#: Every numeric flag of the bench commands, by its argparse dest (a command checks those it has).
NUMERIC: dict[str, Bound] = {
    "slots": Bound("--slots", 1, meaning="ranks on this machine"),
    "deadline": Bound("--deadline", 0, above=True, meaning="seconds"),
    "timeout": Bound("--timeout", 0, above=True, meaning="seconds"),
    "master_port": Bound("--master-port", 1, high=65535),
    "ssh_port": Bound("--ssh-port", 1, high=65535),
    "connect_timeout": Bound("--connect-timeout", 0, above=True, meaning="seconds"),
    "iters": Bound("--iters", 1, meaning="timed operations"),
    "warmup": Bound("--warmup", 0),
    "step_factor": Bound("--step-factor", 2, meaning="each size is the previous one times F"),
    "rounds": Bound("--rounds", 1),
    "pair_iters": Bound("--pair-iters", 1, meaning="timed all_reduces per pair"),
    "slow_ratio": Bound("--slow-ratio", 0, above=True, high=1,
                        meaning="a pair below R x the best pair's busbw is slow"),
    "pair_deadline": Bound("--pair-deadline", 0, above=True, meaning="seconds"),
    "mem_mib": Bound("--mem-mib", 0, meaning="0: the default"),
    "matmul_n": Bound("--matmul-n", 0, meaning="0: the default"),
    "steps": Bound("--steps", 1),
    "build_deadline": Bound("--build-deadline", 0, above=True, meaning="seconds"),
    "slurm_wait": Bound("--slurm-wait", 0, above=True, meaning="seconds"),
}
#: Message-size flags, by dest.
SIZES = {"min_bytes": "--min-bytes", "max_bytes": "--max-bytes", "size": "--size"}


def check_bench_arguments(args: argparse.Namespace) -> None:
    """Raise UsageError for the first flag of ``args`` a workload could not run with."""
    for dest, bound in NUMERIC.items():
        value = getattr(args, dest, None)
        if value is not None:
            problem = bound.problem(value)
            if problem:
                raise UsageError(problem)
    sizes = {dest: _size(args, dest, flag) for dest, flag in SIZES.items() if getattr(args, dest, None) is not None}
    element = TYPE_SIZES.get(getattr(args, "dtype", None) or "float32", 4)
    if hasattr(args, "ops"):
        _check_sweep(args, sizes, element)
    if "size" in sizes and sizes["size"] < TYPE_SIZES["float32"]:  # the search's all_reduce is float32
        raise UsageError(f"--size {args.size}: smaller than one float32 element ({TYPE_SIZES['float32']} bytes)")
    if getattr(args, "write_hostfile", None) and not args.hostfile:
        raise UsageError("--write-hostfile needs a HOSTFILE")


def _size(args: argparse.Namespace, dest: str, flag: str) -> int:
    text = getattr(args, dest)
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if size < 1:
        raise UsageError(f"{flag} {text}: must be at least 1 byte")
    return size


def _check_sweep(args: argparse.Namespace, sizes: dict[str, int], element: int) -> None:
    """The collectives' --ops and message sizes (--sizes, or --min-bytes/--max-bytes/--step-factor)."""
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise UsageError(f"--ops: unknown collective(s) {', '.join(unknown)}; choose from {', '.join(OPS)}")
    if not ops:
        raise UsageError(f"--ops {args.ops!r}: name at least one of {', '.join(OPS)}")
    if args.sizes.strip():
        listed = []
        for text in (s for s in args.sizes.split(",") if s.strip()):
            try:
                listed.append(parse_size(text))
            except ValueError as exc:
                raise UsageError(f"--sizes: {exc}") from None
        if not listed:
            raise UsageError(f"--sizes {args.sizes!r}: name at least one size (1M,64M)")
        if min(listed) < element:
            raise UsageError(f"--sizes {args.sizes}: {min(listed)} bytes is less than one {args.dtype} element "
                             f"({element} bytes)")
        return
    low, high = sizes["min_bytes"], sizes["max_bytes"]
    if low > high:
        raise UsageError(f"--min-bytes {args.min_bytes} --max-bytes {args.max_bytes}: the smallest message is larger "
                         "than the largest")
    if high < element:
        raise UsageError(f"--max-bytes {args.max_bytes}: less than one {args.dtype} element ({element} bytes)")
