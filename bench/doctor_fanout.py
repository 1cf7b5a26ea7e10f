#!/usr/bin/env python3
"""`clusterkit doctor HOSTFILE` wall time on 1, 4 and 8 namespace nodes (needs root).

One cluster of the largest size is started, every node gets the training env at /opt/ckenv, and it is
bootstrapped from node1. Each size then has its own hostfile (the first N nodes; nodes left out sit
idle). After one warm-up run per size, RUNS rounds time every size in turn, so slow spells of this
shared 2-core machine hit all sizes alike instead of whichever size ran during them; the table gives
each size's median. Then one `doctor --fresh` run per size re-probes every Python env (imports torch
and DeepSpeed on every node), as a first run after an env change does. All nodes share this machine's
CPUs, so per-node CPU work adds up here; on a real cluster each node brings its own. Prints a table;
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster.clusterkit_run import bootstrap, clusterkit  # noqa: E402
from tests.cluster.harness import Cluster  # noqa: E402


def measure(sizes: list[int], runs: int, extra: str) -> dict[int, tuple[list[float], float]]:
    """size -> (warm run times, one --fresh run time), sizes interleaved on one cluster."""
    with Cluster.start(max(sizes), "bench") as cluster:
        python = cluster.install_python_env()
        result = bootstrap(cluster, python)
        if result.rc != 0:
            raise SystemExit(f"bootstrap of {len(cluster.nodes)} nodes failed:\n{result.stdout[-2000:]}"
                             f"{result.stderr[-2000:]}")
        head = cluster.nodes[0]
        lines = cluster.hostfile_text().splitlines()
        for size in sizes:
            head.put_file(f"/home/ckuser/hostfile-{size}", "\n".join(lines[:size]) + "\n")

        def doctor(size: int, flags: str) -> float:
            started = time.perf_counter()
            out = clusterkit(head, f"doctor ~/hostfile-{size} --json --python {shlex.quote(python)} {flags}")
            if out.rc not in (0, 1):
                raise SystemExit(f"doctor failed on {size} nodes: {out.stderr[-2000:]}")
            return time.perf_counter() - started

        for size in sizes:
            doctor(size, extra)  # warm-up: ships the agent, fills the probe caches
        times: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(runs):
            for size in sizes:
                times[size].append(doctor(size, extra))
        return {size: (times[size], doctor(size, f"--fresh {extra}")) for size in sizes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,8", help="cluster sizes (default 1,4,8)")
    parser.add_argument("--runs", type=int, default=5, help="doctor runs per size (default 5)")
    parser.add_argument("--doctor-args", default="", help="extra flags for doctor, e.g. --no-probes")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for size, (times, fresh) in measure(sizes, args.runs, args.doctor_args).items():
        rows.append((size, statistics.median(times), min(times), max(times), fresh))
        print(f"{size} nodes: " + ", ".join(f"{t:.2f}s" for t in times) + f"; --fresh {fresh:.2f}s",
              file=sys.stderr, flush=True)
    base, base_fresh = rows[0][1], rows[0][4]
    print(f"clusterkit doctor HOSTFILE on namespace nodes ({os.cpu_count()} CPUs shared by all nodes); "
          f"median of {args.runs} interleaved runs, and one --fresh run")
    print(f"{'nodes':>5}  {'median s':>8}  {'min s':>6}  {'max s':>6}  {'vs 1st':>6}  {'--fresh s':>9}  {'vs 1st':>6}")
    for size, median, low, high, fresh in rows:
        print(f"{size:>5}  {median:>8.2f}  {low:>6.2f}  {high:>6.2f}  {median / base:>5.2f}x  {fresh:>9.2f}  "
              f"{fresh / base_fresh:>5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
