"""What torch's flight recorder costs a gloo job on CPU: time per collective and memory per entry.

Run as ``python bench/flightrec_cost.py`` (it starts its own ranks with torch.distributed.run, flight
recorder off then on, alternately, ``--rounds`` times). Each rank all_reduces a ``--numel``-float tensor
``--calls`` times; the recorder keeps ``--entries`` of them. Prints one JSON line per run and a summary.
Not a test: the figures go in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rank_main(calls: int, numel: int) -> None:
    import resource

    import torch
    import torch.distributed as dist
    from torch._C import _distributed_c10d as c10d

    dist.init_process_group("gloo")
    tensor = torch.ones(numel)
    for _ in range(50):  # warm up
        dist.all_reduce(tensor)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dist.barrier()
    started = time.perf_counter()
    for _ in range(calls):
        dist.all_reduce(tensor)
    took = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dump = c10d._dump_fr_trace(True, False, False) if int(os.environ.get("TORCH_FR_BUFFER_SIZE", "0")) else b""
    if dist.get_rank() == 0:
        import pickle

        entries = len(pickle.loads(dump)["entries"]) if dump else 0
        print(json.dumps({"us_per_call": 1e6 * took / calls, "rss_growth_kib": rss_after - rss_before,
                          "dump_bytes": len(dump), "entries": entries}), flush=True)
    dist.destroy_process_group()


def run(entries: int, calls: int, numel: int, nprocs: int) -> dict[str, float]:
    env = {**os.environ, "TORCH_FR_BUFFER_SIZE": str(entries), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}", "--standalone",
                          __file__, "--rank-main", "--calls", str(calls), "--numel", str(numel)],
                         env=env, capture_output=True, text=True, timeout=600, check=True, cwd=tempfile.gettempdir())
    line = next(x for x in out.stdout.splitlines() if x.startswith("{"))
    return dict(json.loads(line), buffer=entries)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--numel", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.rank_main:
        rank_main(args.calls, args.numel)
        return
    results: dict[int, list[dict[str, float]]] = {0: [], args.entries: []}
    for _ in range(args.rounds):
        for entries in results:
            result = run(entries, args.calls, args.numel, args.nprocs)
            results[entries].append(result)
            print(json.dumps(result), flush=True)
    off = statistics.median(r["us_per_call"] for r in results[0])
    on = statistics.median(r["us_per_call"] for r in results[args.entries])
    last = results[args.entries][-1]
    print(json.dumps({"median_us_per_call_off": round(off, 1), "median_us_per_call_on": round(on, 1),
                      "overhead_us_per_call": round(on - off, 1),
                      "dump_bytes_per_entry": round(last["dump_bytes"] / max(1, last["entries"]), 1),
                      "rss_growth_kib_on": statistics.median(r["rss_growth_kib"] for r in results[args.entries]),
                      "rss_growth_kib_off": statistics.median(r["rss_growth_kib"] for r in results[0])}))


if __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if Path(p).resolve() != Path(__file__).resolve().parent]
    main()
