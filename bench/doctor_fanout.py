#!/usr/bin/env python3
"""`clusterkit doctor HOSTFILE` wall time on namespace clusters of 1, 4 and 8 nodes (needs root).

For each size: start the cluster, give every node the training env at /opt/ckenv, bootstrap from
node1, then time RUNS doctor runs from node1 (median), and one `doctor --fresh` run, which re-probes
every Python env (imports torch and DeepSpeed on every node) as a first run after an env change does.
All nodes share this machine's CPUs, so per-node CPU work adds up here; on a real cluster each node
brings its own. Prints a table; asserts nothing.
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


def measure(nodes: int, runs: int, extra: str) -> tuple[list[float], float]:
    with Cluster.start(nodes, "bench") as cluster:
        python = cluster.install_python_env()
        result = bootstrap(cluster, python)
        if result.rc != 0:
            raise SystemExit(f"bootstrap of {nodes} nodes failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        def doctor(flags: str) -> float:
            started = time.perf_counter()
            out = clusterkit(cluster.nodes[0], f"doctor ~/hostfile --json --python {shlex.quote(python)} {flags}")
            if out.rc not in (0, 1):
                raise SystemExit(f"doctor failed on {nodes} nodes: {out.stderr[-2000:]}")
            return time.perf_counter() - started

        fresh = doctor(f"--fresh {extra}")
        return [doctor(extra) for _ in range(runs)], fresh


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,8", help="cluster sizes (default 1,4,8)")
    parser.add_argument("--runs", type=int, default=3, help="doctor runs per size (default 3)")
    parser.add_argument("--doctor-args", default="", help="extra flags for doctor, e.g. --no-probes")
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        times, fresh = measure(size, args.runs, args.doctor_args)
        rows.append((size, statistics.median(times), min(times), max(times), fresh))
        print(f"{size} nodes: " + ", ".join(f"{t:.2f}s" for t in times) + f"; --fresh {fresh:.2f}s",
              file=sys.stderr, flush=True)
    base, base_fresh = rows[0][1], rows[0][4]
    print(f"clusterkit doctor HOSTFILE on namespace nodes ({os.cpu_count()} CPUs shared by all nodes); "
          f"median of {args.runs} runs, and one --fresh run")
    print(f"{'nodes':>5}  {'median s':>8}  {'min s':>6}  {'max s':>6}  {'vs 1st':>6}  {'--fresh s':>9}  {'vs 1st':>6}")
    for size, median, low, high, fresh in rows:
        print(f"{size:>5}  {median:>8.2f}  {low:>6.2f}  {high:>6.2f}  {median / base:>5.2f}x  {fresh:>9.2f}  "
              f"{fresh / base_fresh:>5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
