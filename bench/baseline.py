#!/usr/bin/env python3
"""Saved runs and their comparison: what a comparison costs at 64 nodes, and the run-to-run noise of the
measured figures that sets the default ``--noise`` threshold.

1. ``cost`` (this machine): two doctor runs of 64 synthetic 8-GPU H100 nodes (NVLink, 8 IB ports) saved
   into a history, then ``--compare``'s work timed: both files read and decoded, compared, grouped into
   findings; once unchanged, once with a driver moved on 2 nodes and a GPU at x8 on one. Peak Python
   memory (tracemalloc) beside it.
2. ``noise`` (needs root: a 3-node namespace cluster, gloo over veth): ``bench collectives`` and ``bench
   find-slow`` repeated on the unchanged cluster; per figure the spread of the repeats, and the largest
   fall of one run against another (what a comparison would report at threshold 0). ``--from DIR`` reads
   JSON documents saved before (``coll-*.json``, ``slow-*.json``) instead of running.

    bench/baseline.sh cost
    bench/baseline.sh noise --rounds 4

Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic_cluster(n: int, changed: bool) -> dict[str, Any]:
    from tests.factories import healthy_gpu_node, make_host, make_nvidia, with_gpu

    nodes = {}
    for i in range(1, n + 1):
        name = f"gpu{i:02d}"
        node = healthy_gpu_node(8, host=make_host(name), nvidia=make_nvidia(8, nvlink=True))
        if changed and i in (7, 8):
            assert not isinstance(node.nvidia, str)
            node = dataclasses.replace(node, nvidia=dataclasses.replace(node.nvidia, driver_version="560.28"))
        if changed and i == 9:
            node = with_gpu(node, 3, pcie_width_current=8)
        nodes[name] = node
    return nodes


def cost(nodes: int, repeats: int) -> None:
    from clusterkit.core.change_report import comparison_findings
    from clusterkit.core.findings import Outcome
    from clusterkit.core.run_diff import compare_runs
    from clusterkit.core.saved_run import SavedRun
    from clusterkit.history import History, load

    with tempfile.TemporaryDirectory() as tmp:
        history = History(Path(tmp))
        good = history.save(SavedRun("doctor", hosts=[f"gpu{i:02d}" for i in range(1, nodes + 1)],
                                     facts=synthetic_cluster(nodes, False), started_at=1.0), name="good")
        print(f"comparison of two doctor runs of {nodes} synthetic 8-GPU H100 nodes (NVLink, 8 IB ports); "
              f"a saved run is {good.size / 1e6:.2f} MB; median of {repeats}")
        print(f"{'case':28} {'read+decode s':>14} {'compare s':>10} {'findings s':>11} {'peak MiB':>9} {'changes':>8}")
        for case, changed in (("unchanged", False), ("driver x2, one GPU at x8", True)):
            now = history.save(SavedRun("doctor", hosts=[f"gpu{i:02d}" for i in range(1, nodes + 1)],
                                        facts=synthetic_cluster(nodes, changed), started_at=2.0))
            reads, compares, groups, peaks = [], [], [], []
            failed = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                before, after = load(good.path), load(now.path)
                t1 = time.perf_counter()
                comparison = compare_runs(before, after)
                t2 = time.perf_counter()
                findings = comparison_findings(comparison, "run good")
                t3 = time.perf_counter()
                reads.append(t1 - t0)
                compares.append(t2 - t1)
                groups.append(t3 - t2)
                failed = [f for f in findings if f.outcome is Outcome.FAIL]
            tracemalloc.start()  # apart from the timings: tracing slows Python several times over
            comparison_findings(compare_runs(load(good.path), load(now.path)), "run good")
            peaks.append(tracemalloc.get_traced_memory()[1] / (1 << 20))
            tracemalloc.stop()
            print(f"{case:28} {statistics.median(reads):14.3f} {statistics.median(compares):10.3f} "
                  f"{statistics.median(groups):11.4f} {max(peaks):9.1f} {len(failed):8}")
            for f in failed:
                print(f"    {f.host}: {f.message}")


def _figures(directory: Path) -> dict[str, list[dict[tuple[str, str], float]]]:
    from clusterkit.core.saved_run import figures_from_bench

    runs: dict[str, list[dict[tuple[str, str], float]]] = {}
    for prefix, workload in (("coll", "collectives"), ("slow", "find-slow")):
        for path in sorted(directory.glob(f"{prefix}-*.json")):
            try:
                doc = json.loads(path.read_text())
            except ValueError:
                continue
            runs.setdefault(workload, []).append({(f.subject, f.metric): f.value
                                                  for f in figures_from_bench(workload, doc)})
    return runs


def noise(rounds: int, source: Path | None) -> None:
    directory = source
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="ck-noise-"))
        _run_repeats(rounds, directory)
    runs = _figures(directory)
    print(f"run-to-run noise of the bench figures on the unchanged namespace cluster ({directory})")
    print(f"{'workload':12} {'figure':42} {'runs':>4} {'median':>9} {'min':>9} {'max':>9} {'worst fall':>10}")
    worst_all = 0.0
    for workload, per_run in runs.items():
        keys = sorted({k for r in per_run for k in r})
        for key in keys:
            values = [r[key] for r in per_run if key in r]
            if len(values) < 2:
                continue
            worst = 1 - min(values) / max(values)
            worst_all = max(worst_all, worst)
            label = f"{key[0]} {key[1]}"
            print(f"{workload:12} {label[:42]:42} {len(values):4} {statistics.median(values):9.4g} "
                  f"{min(values):9.4g} {max(values):9.4g} {worst:10.0%}")
    print(f"largest fall of one unchanged run against another: {worst_all:.0%}")


def _run_repeats(rounds: int, directory: Path) -> None:
    from tests.cluster.clusterkit_run import bootstrap, clusterkit
    from tests.cluster.harness import Cluster

    with Cluster.start(3, "bench") as cluster:
        python = cluster.install_python_env(prebuilt_ops=True)
        done = bootstrap(cluster, python)
        if done.rc != 0:
            raise SystemExit(f"bootstrap failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        for i in range(rounds):
            for name, args in (("coll", "collectives ~/hostfile --ops all_reduce,all_gather --sizes 64K,1M "
                                        "--iters 5 --no-expect"),
                               ("slow", "find-slow ~/hostfile --size 1M --pair-iters 3")):
                result = clusterkit(cluster.nodes[0], f"bench {args} --python {python} --connect-timeout 3 --json "
                                                      "--no-save-run", timeout=900)
                (directory / f"{name}-{i}.json").write_text(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cost")
    c.add_argument("--nodes", type=int, default=64)
    c.add_argument("--repeats", type=int, default=5)
    n = sub.add_parser("noise")
    n.add_argument("--rounds", type=int, default=4)
    n.add_argument("--from", dest="source", type=Path, help="directory of saved bench JSON documents")
    args = parser.parse_args()
    if args.what == "cost":
        cost(args.nodes, args.repeats)
    else:
        noise(args.rounds, args.source)


if __name__ == "__main__":
    main()
