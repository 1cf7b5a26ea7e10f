#!/usr/bin/env python3
"""Workload figures: the collective bench's overhead, and where the ZeRO suite's wall time goes (CPU).

1. ``overhead`` (needs root: a 3-node namespace cluster, gloo): ``clusterkit bench collectives
   --baseline`` times, in one run, the bench's own loop and a bare ``torch.distributed`` loop of the
   same collective on the same buffers, interleaved round by round. Per collective and size the
   table gives both busbw medians and their ratio (goal: the bench within 5% of the bare loop).
2. ``zero`` (this machine, 2 ranks): ``clusterkit bench zero`` with an empty ops cache, so DeepSpeed
   really compiles its ops in the up-front build; the wall time is split into that JIT build, the
   suite's start-up (launcher, imports, process group) and training (the steps of every stage), then
   the suite runs again with the cache warm (the ops load only).

    bench/workloads.sh                 # both
    bench/workloads.sh overhead --rounds 7
    bench/workloads.sh zero

Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def overhead(rounds: int, sizes: str, ops: str, iters: int) -> None:
    from tests.cluster.clusterkit_run import bootstrap, clusterkit
    from tests.cluster.harness import Cluster

    with Cluster.start(3, "bench") as cluster:
        python = cluster.install_python_env(prebuilt_ops=True)
        done = bootstrap(cluster, python)
        if done.rc != 0:
            raise SystemExit(f"bootstrap failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        args = (f"bench collectives ~/hostfile --python {python} --ops {ops} --sizes {sizes} --iters {iters} "
                f"--warmup 2 --baseline --rounds {rounds} --no-expect --json")
        started = time.monotonic()
        result = clusterkit(cluster.nodes[0], args, timeout=3600)
        wall = time.monotonic() - started
        if result.rc != 0:
            raise SystemExit(f"bench failed ({result.rc}):\n{result.stderr[-3000:]}")
        doc = json.loads(result.stdout)
    sweep = doc["result"]
    print(f"collective bench vs a bare torch.distributed loop: {sweep['world_size']} ranks on 3 namespace nodes, "
          f"{sweep['backend']}, {sweep['dtype']}, {iters} ops per timing, {rounds} interleaved rounds "
          f"(medians), run wall {wall:.0f}s")
    print(f"{'collective':16} {'size':>10} {'variant':12} {'bench GB/s':>11} {'bare GB/s':>10} {'bench/bare':>10}")
    ratios = []
    for op, body in sweep["ops"].items():
        for row in body["rows"]:
            pairs = row.get("baseline") or []
            variants = [v for v in ("out_of_place", "in_place") if row.get(v)]
            per = max(1, len(pairs) // max(1, len(variants)))
            for i, variant in enumerate(variants):
                chunk = pairs[i * per:(i + 1) * per]
                if not chunk:
                    continue
                bench = statistics.median(p["bench_busbw"] for p in chunk)
                bare = statistics.median(p["bare_busbw"] for p in chunk)
                per_round = statistics.median(p["bench_busbw"] / p["bare_busbw"] for p in chunk)
                ratios.append(per_round)
                print(f"{op:16} {row['size']:>10} {variant:12} {bench:11.4g} {bare:10.4g} {per_round:10.3f}")
    if ratios:
        print(f"median bench/bare over every row: {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


def zero(stages: str, steps: int) -> None:
    clusterkit = [sys.executable, "-m", "clusterkit"]
    cache = tempfile.mkdtemp(prefix="ck-bench-ops-")
    runs = []
    try:
        for label, extra in (("cold ops cache", []), ("warm ops cache", [])):
            argv = [*clusterkit, "bench", "zero", "--slots", "2", "--stages", stages, "--steps", str(steps),
                    "--ops-cache", cache, "--deadline", "1800", "--build-deadline", "3600", "--json", *extra]
            started = time.monotonic()
            done = subprocess.run(argv, capture_output=True, text=True, timeout=7200, cwd=REPO, check=False)
            wall = time.monotonic() - started
            if done.returncode != 0:
                print(f"{label}: clusterkit bench zero exited {done.returncode}:\n{done.stderr[-3000:]}")
                return
            runs.append((label, wall, json.loads(done.stdout)))
    finally:
        subprocess.run(["rm", "-rf", cache], check=False)
    print(f"ZeRO smoke suite on this machine: 2 ranks (gloo, fp32), stages {stages}, {steps} steps each; "
          f"ops cache {shlex.quote(cache)} empty before the first run")
    print(f"{'run':16} {'wall s':>7} {'JIT build s':>12} {'start-up s':>11} {'training s':>11} "
          f"{'engine init s':>14} {'checkpoints s':>14}  ops built (s)")
    for label, wall, doc in runs:
        t = doc["timings"]
        ops = next(iter(t.get("build_ops_s", {}).values()), {})
        built = {op: seconds for op, seconds in ops.items()}
        print(f"{label:16} {wall:7.1f} {t.get('build_launch_s', 0):12.1f} {t.get('startup_s', 0):11.1f} "
              f"{t.get('train_s', 0):11.2f} {t.get('engine_init_s', 0):14.1f} {t.get('checkpoint_s', 0):14.1f}  "
              f"{built}")
    print("JIT build = the up-front build launch (one rank); start-up = the suite launch's time outside its "
          "stages (launcher, imports, process group); training = the steps of every stage.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", choices=("overhead", "zero", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="64K,1M,4M")
    parser.add_argument("--ops", default="all_reduce,all_gather,reduce_scatter")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--stages", default="0,1,2,3,3o")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.part in ("overhead", "all"):
        overhead(args.rounds, args.sizes, args.ops, args.iters)
    if args.part in ("zero", "all"):
        zero(args.stages, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
