"""Collective bandwidth across every rank of a DeepSpeed launch, in nccl-tests' layout.

    deepspeed --hostfile H collectives.py --ops all_reduce,all_gather --min-bytes 1K --max-bytes 64M --json

For each collective and message size: warm-up, then ``--iters`` operations timed back to back (the
device synchronised before and after), the time averaged over ranks (as nccl-tests does), algbw and
busbw with nccl-tests' factors (see nccl_format), then one more operation on known data whose result
is checked element by element (``#wrong``). torch runs all_reduce and broadcast in place only and
all_to_all_single out of place only: those rows leave the other variant blank.

``--baseline`` also times a bare ``torch.distributed`` loop on the same buffers, interleaved with the
bench's own timing, so the bench's overhead can be measured in the same run.

``--fit-by EPOCH`` makes the sizes upper bounds: each size after an op's first is predicted from the
time of the last one measured, and one that would not finish (with its warm-up, iterations and
check) within half the time left before EPOCH is shrunk to what fits, or the op's sweep ends there.
So a slow link gets a number at a smaller size instead of running into the head's deadline.

Runs inside the training env through DeepSpeed's launcher (NCCL on GPUs, gloo on CPU) and imports
nothing from clusterkit. Rank 0 prints the table, and with ``--json`` ``@@ck-result@@`` lines: the
run's header (kind ``collectives_header``) first, each row as it is measured (``collectives_row``), so
the head can show what was measured when a run is cut short, and the whole report at the end
(``collectives``).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nccl_format as fmt
import workload_io as wio


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    wio.add_common_arguments(parser)
    parser.add_argument("--ops", default=",".join(fmt.OPS), help="comma-separated: " + ", ".join(fmt.OPS))
    parser.add_argument("--min-bytes", default="1K", help="smallest message (nccl-tests -b; K/M/G)")
    parser.add_argument("--max-bytes", default="16M", help="largest message (nccl-tests -e)")
    parser.add_argument("--step-factor", type=int, default=4, help="size multiplier (nccl-tests -f)")
    parser.add_argument("--sizes", default="", help="exact sizes instead of a sweep (e.g. the job's buckets)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=sorted(fmt.TYPE_SIZES))
    parser.add_argument("--check", type=int, default=1, help="1: check results (#wrong); 0: N/A")
    parser.add_argument("--baseline", action="store_true", help="also time a bare torch.distributed loop")
    parser.add_argument("--rounds", type=int, default=1, help="with --baseline: interleaved rounds per size")
    parser.add_argument("--json", action="store_true", help="print the result as @@ck-result@@ lines")
    parser.add_argument("--fit-by", type=float, default=0.0, metavar="EPOCH",
                        help="shrink sizes that would not finish before this time (seconds since the epoch)")
    args = parser.parse_args(argv)
    for flag, value, least in (("--iters", args.iters, 1), ("--warmup", args.warmup, 0),
                               ("--step-factor", args.step_factor, 2), ("--rounds", args.rounds, 1)):
        if value < least:
            parser.error(f"{flag} {value}: must be at least {least}")
    return args


#: The share of the time left before --fit-by that one size may take.
FIT_SHARE = 0.5
STARTED = time.perf_counter()


class Bench:
    """One process's view: its rank, the device, and the collectives it times."""

    def __init__(self, args: argparse.Namespace) -> None:
        import datetime

        import deepspeed
        import torch
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        self.torch = torch
        self.dist = dist
        accelerator = get_accelerator()
        self.on_cuda = accelerator.device_name() == "cuda"
        if self.on_cuda:
            torch.cuda.set_device(args.local_rank)
            self.device = torch.device("cuda", args.local_rank)
        else:
            self.device = torch.device("cpu")
        deepspeed.init_distributed(timeout=datetime.timedelta(seconds=args.timeout_s))
        self.rank = dist.get_rank()
        self.n = dist.get_world_size()
        self.backend = str(dist.get_backend())
        self.dtype = getattr(torch, args.dtype)
        self.elt = fmt.TYPE_SIZES[args.dtype]
        self.args = args

    def sync(self) -> None:
        if self.on_cuda:
            self.torch.cuda.synchronize()

    # ------------------------------------------------------------------------------------ data

    def pattern(self, rank_number: int, count: int, offset: int = 0) -> Any:
        """Rank ``rank_number``'s known data: values 1..3, exact in every dtype."""
        torch = self.torch
        index = torch.arange(offset, offset + count, device=self.device, dtype=torch.int64)
        return ((index + rank_number) % 3 + 1).to(self.dtype)

    def expected(self, op: str, chunk: int) -> Any:
        torch = self.torch
        if op == "all_reduce":
            total = torch.zeros(chunk, device=self.device, dtype=torch.float64)
            for other in range(self.n):
                total += self.pattern(other, chunk).double()
            return total
        if op == "all_gather":
            return torch.cat([self.pattern(other, chunk) for other in range(self.n)]).double()
        if op == "reduce_scatter":
            total = torch.zeros(chunk, device=self.device, dtype=torch.float64)
            for other in range(self.n):
                total += self.pattern(other, chunk, offset=self.rank * chunk).double()
            return total
        if op == "all_to_all":
            return torch.cat([self.pattern(other, chunk, offset=self.rank * chunk)
                              for other in range(self.n)]).double()
        if op == "broadcast":
            return self.pattern(0, chunk).double()
        raise ValueError(op)

    def count_wrong(self, got: Any, want: Any) -> int:
        tolerance = 1e-2 if self.elt <= 2 else 1e-6
        diff = (got.double() - want).abs()
        return int((diff > tolerance * want.abs().clamp(min=1.0)).sum().item())

    # ------------------------------------------------------------------------- one operation

    def operation(self, op: str, variant: str, chunk: int) -> tuple[Callable[[], None], Callable[[], Any]]:
        """(run once, reset to known data and return the output tensor) for ``op``'s ``variant``."""
        torch, dist, n, rank = self.torch, self.dist, self.n, self.rank
        empty = lambda count: torch.empty(count, device=self.device, dtype=self.dtype)  # noqa: E731
        if op in ("all_reduce", "broadcast"):
            buf = empty(chunk)
            run = ((lambda: dist.all_reduce(buf)) if op == "all_reduce"
                   else (lambda: dist.broadcast(buf, src=0)))

            def reset_inplace() -> Any:
                buf.copy_(self.pattern(rank, chunk))
                return buf

            return run, reset_inplace
        if op == "all_gather":
            out = empty(chunk * n)
            inp = out.narrow(0, rank * chunk, chunk) if variant == "in_place" else empty(chunk)

            def reset_gather() -> Any:
                inp.copy_(self.pattern(rank, chunk))
                return out

            return (lambda: dist.all_gather_into_tensor(out, inp)), reset_gather
        if op == "reduce_scatter":
            inp = empty(chunk * n)
            out = inp.narrow(0, rank * chunk, chunk) if variant == "in_place" else empty(chunk)

            def reset_scatter() -> Any:
                inp.copy_(self.pattern(rank, chunk * n))
                return out

            return (lambda: dist.reduce_scatter_tensor(out, inp)), reset_scatter
        if op == "all_to_all":
            inp, out = empty(chunk * n), empty(chunk * n)

            def reset_a2a() -> Any:
                inp.copy_(self.pattern(rank, chunk * n))
                return out

            return (lambda: dist.all_to_all_single(out, inp)), reset_a2a
        raise ValueError(op)

    def time_loop(self, run: Callable[[], None], iters: int) -> float:
        """Seconds per operation on this rank: ``iters`` back to back, device synchronised around them."""
        self.dist.barrier()
        self.sync()
        started = time.perf_counter()
        for _ in range(iters):
            run()
        self.sync()
        return (time.perf_counter() - started) / iters

    def bare_loop(self, op: str, tensors: tuple[Any, Any], iters: int) -> float:
        """The same operation, written inline as anyone would time it: the baseline for the overhead."""
        dist = self.dist
        out, inp = tensors
        dist.barrier()
        self.sync()
        started = time.perf_counter()
        if op == "all_reduce":
            for _ in range(iters):
                dist.all_reduce(out)
        elif op == "broadcast":
            for _ in range(iters):
                dist.broadcast(out, src=0)
        elif op == "all_gather":
            for _ in range(iters):
                dist.all_gather_into_tensor(out, inp)
        elif op == "reduce_scatter":
            for _ in range(iters):
                dist.reduce_scatter_tensor(out, inp)
        else:
            for _ in range(iters):
                dist.all_to_all_single(out, inp)
        self.sync()
        return (time.perf_counter() - started) / iters

    def mean_over_ranks(self, values: list[float]) -> tuple[list[float], list[float]]:
        """(mean over ranks, max over ranks) of each value."""
        torch = self.torch
        device = self.device if self.backend != "gloo" else torch.device("cpu")
        local = torch.tensor(values, dtype=torch.float64, device=device)
        total, peak = local.clone(), local.clone()
        self.dist.all_reduce(total)
        self.dist.all_reduce(peak, op=self.dist.ReduceOp.MAX)
        return [v / self.n for v in total.tolist()], peak.tolist()

    def min_over_ranks(self, value: int) -> int:
        """The smallest of every rank's ``value``: one decision all ranks take alike."""
        torch = self.torch
        device = self.device if self.backend != "gloo" else torch.device("cpu")
        local = torch.tensor([value], dtype=torch.int64, device=device)
        self.dist.all_reduce(local, op=self.dist.ReduceOp.MIN)
        return int(local.item())

    def operations_per_size(self, op: str) -> int:
        """How many times ``op`` runs for one row: warm-up, timed loops (and the bare ones), the check."""
        args = self.args
        timed = args.iters * max(1, args.rounds if args.baseline else 1) * (2 if args.baseline else 1)
        return len(fmt.VARIANTS[op]) * (args.warmup + timed + (1 if args.check else 0))

    def fitted(self, op: str, wanted: int, measured: int, row: dict[str, Any]) -> int:
        """``wanted``, or the size that fits before --fit-by at the rate of ``row`` (measured at
        ``measured`` bytes); the same on every rank."""
        args = self.args
        seconds = max(v["max_rank_time_us"] for v in (row["out_of_place"], row["in_place"]) if v) / 1e6
        left = min(args.fit_by - time.time(), args.timeout_s - (time.perf_counter() - STARTED))
        size = fmt.fitted_size(wanted, measured, seconds, self.operations_per_size(op), FIT_SHARE * max(0.0, left))
        return self.min_over_ranks(size)

    def sum_over_ranks(self, value: int) -> int:
        torch = self.torch
        device = self.device if self.backend != "gloo" else torch.device("cpu")
        local = torch.tensor([value], dtype=torch.int64, device=device)
        self.dist.all_reduce(local)
        return int(local.item())

    # ------------------------------------------------------------------------------- one row

    def measure(self, op: str, size: int) -> dict[str, Any] | None:
        """One row of the table for ``op`` at ``size`` bytes (None when the size holds no element per rank)."""
        args = self.args
        _, _, chunk = fmt.element_counts(op, size, self.elt, self.n)
        if chunk == 0:
            return None
        row = fmt.row_preamble(op, size, self.elt, self.n, args.dtype)
        row["op"] = op
        baseline: list[tuple[float, float]] = []
        for variant in ("out_of_place", "in_place"):
            if variant not in fmt.VARIANTS[op]:
                row[variant] = None
                continue
            run, reset = self.operation(op, variant, chunk)
            reset()
            for _ in range(args.warmup):
                run()
            seconds, bare = [], []
            for _ in range(max(1, args.rounds if args.baseline else 1)):
                seconds.append(self.time_loop(run, args.iters))
                if args.baseline:
                    bare.append(self.bare_loop(op, self._tensors(op, variant, chunk), args.iters))
            wrong = None
            if args.check:
                output = reset()
                run()
                self.sync()
                wrong = self.sum_over_ranks(self.count_wrong(output, self.expected(op, chunk)))
            means, peaks = self.mean_over_ranks(seconds + bare)
            bench_s = sorted(means[:len(seconds)])[len(seconds) // 2]
            algbw, busbw = fmt.bandwidths(op, chunk, self.elt, bench_s, self.n)
            row[variant] = {"time_us": bench_s * 1e6, "algbw": algbw, "busbw": busbw, "wrong": wrong,
                            "max_rank_time_us": max(peaks[:len(seconds)]) * 1e6}
            if bare:
                for bench_mean, bare_mean in zip(means[:len(seconds)], means[len(seconds):]):
                    baseline.append((fmt.bandwidths(op, chunk, self.elt, bench_mean, self.n)[1],
                                     fmt.bandwidths(op, chunk, self.elt, bare_mean, self.n)[1]))
        if args.baseline:
            row["baseline"] = [{"bench_busbw": b, "bare_busbw": r} for b, r in baseline]
        return row

    def _tensors(self, op: str, variant: str, chunk: int) -> tuple[Any, Any]:
        """Fresh (output, input) tensors for the bare loop, shaped as the bench's own."""
        torch, n, rank = self.torch, self.n, self.rank
        empty = lambda count: torch.zeros(count, device=self.device, dtype=self.dtype)  # noqa: E731
        if op in ("all_reduce", "broadcast"):
            buf = empty(chunk)
            return buf, buf
        if op == "all_gather":
            out = empty(chunk * n)
            return out, out.narrow(0, rank * chunk, chunk) if variant == "in_place" else empty(chunk)
        if op == "reduce_scatter":
            inp = empty(chunk * n)
            return (inp.narrow(0, rank * chunk, chunk) if variant == "in_place" else empty(chunk)), inp
        return empty(chunk * n), empty(chunk * n)


def sweep(bench: Bench, op: str, sizes: list[int], leader: bool) -> tuple[list[dict[str, Any]], list[int]]:
    """``op``'s rows over ``sizes`` (fitted to --fit-by when given), and the sizes left unmeasured."""
    args = bench.args
    rows: list[dict[str, Any]] = []
    last = 0
    for index, wanted in enumerate(sizes):
        size = wanted
        if args.fit_by and rows:
            size = bench.fitted(op, wanted, last, rows[-1])
            if size <= last:
                if leader:
                    print(f"# {fmt.human_bytes(wanted)} and up not measured: at the rate of "
                          f"{fmt.human_bytes(last)} they would not finish before the deadline", flush=True)
                return rows, sizes[index:]
        if leader:
            wio.progress(f"{op} {fmt.human_bytes(size)}")
        row = bench.measure(op, size)
        if row is None:
            continue
        if size != wanted:
            row["requested_bytes"] = wanted
        rows.append(row)
        last = size
        if leader:
            if size != wanted:
                print(f"# {fmt.human_bytes(wanted)} would not finish before the deadline at the rate measured: "
                      f"{fmt.human_bytes(size)} instead", flush=True)
            print(fmt.format_row(row), flush=True)
            if args.json:
                wio.result("collectives_row", {"op": op, "size": wanted, "row": row})
    return rows, []


def main(argv: list[str] | None = None) -> int:
    wio.tag_output()
    # torch 2.13 deprecates the *_tensor collectives that DeepSpeed (and this bench) call; once is enough.
    warnings.filterwarnings("ignore", message=r".*is deprecated\. Please use .*_single", category=FutureWarning)
    args = parse_args(argv)
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in ops if op not in fmt.OPS]
    if unknown:
        raise SystemExit("collectives: unknown collective(s) {}; choose from {}".format(unknown, ", ".join(fmt.OPS)))
    sizes = ([fmt.parse_size(s) for s in args.sizes.split(",") if s.strip()] if args.sizes
             else fmt.size_sweep(fmt.parse_size(args.min_bytes), fmt.parse_size(args.max_bytes), args.step_factor))
    wio.progress("starting")
    bench = Bench(args)
    hosts: list[Any] = [None] * bench.n
    bench.dist.all_gather_object(hosts, socket.gethostname())
    leader = bench.rank == 0
    if leader:
        print(f"# clusterkit collectives: {bench.n} ranks, backend {bench.backend}, device {bench.device.type}, "
              f"dtype {args.dtype}, iters {args.iters}, warmup {args.warmup}, check {args.check}", flush=True)
    report: dict[str, Any] = {"schema": "clusterkit.collectives/v1", "world_size": bench.n,
                              "backend": bench.backend, "device": bench.device.type, "dtype": args.dtype,
                              "iters": args.iters, "warmup": args.warmup, "hosts": hosts, "ops": {}}
    if leader and args.json:
        header = {key: value for key, value in report.items() if key != "ops"}
        wio.result("collectives_header", dict(header, planned_ops=ops, sizes=sizes))
    failed = 0
    for op in ops:
        if leader:
            print(f"#\n# {op}", flush=True)
            for line in fmt.header_lines():
                print(line, flush=True)
        rows, skipped = sweep(bench, op, sizes, leader)
        wrong = sum(int(v["wrong"] or 0) for r in rows for v in (r["out_of_place"], r["in_place"]) if v)
        failed += wrong
        report["ops"][op] = {"rows": rows, "avg_busbw": fmt.average_busbw(rows), "wrong": wrong}
        if skipped:
            report["ops"][op]["not_measured"] = skipped
        if leader:
            for line in fmt.footer_lines(wrong, fmt.average_busbw(rows)):
                print(line, flush=True)
    if leader and args.json:
        wio.result("collectives", report)
    bench.dist.barrier()
    bench.dist.destroy_process_group()
    wio.done()
    return 1 if failed else 0


if __name__ == "__main__":
    wio.exit_process(main())
