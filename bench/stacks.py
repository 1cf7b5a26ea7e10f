#!/usr/bin/env python3
"""What ``clusterkit stacks`` costs: the pause each rank sees while its stack is taken, and the time of a
one-shot dump of every rank.

1. pause (this machine): a stand-in rank (RANK/LOCAL_RANK set, the launch hook on its PYTHONPATH) runs a
   tight loop that notes every gap between two of its iterations; its stack is taken ``--times`` times each
   way: py-spy (stops the rank while it reads), py-spy --nonblocking, and the hook's signal. A way's pause
   is the longest gap inside each taking's window, against the gaps of windows with nothing taken.
2. one-shot (this machine): ``clusterkit stacks --dumps 1`` over N stand-in ranks (python3 processes waiting
   in a function), N in ``--ranks``: the command's wall time and the dump's own.
3. with ``--cluster``: the same over SSH on the namespace cluster (3 nodes x N ranks, bootstrapped first;
   needs root, takes the machine's cluster lock).

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clusterkit.node.collect.pystacks import dump_with_pyspy, dump_with_signal, hook_file  # noqa: E402
from clusterkit.stacks.ship import HOOK_SOURCE, head_pyspy  # noqa: E402

#: The stand-in rank: notes every gap over 0.2 ms between loop iterations (head clock), prints them on SIGTERM.
GAPS = """
import json, signal, sys, time
gaps = []
def done(*_):
    print(json.dumps(gaps), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
print("ready", flush=True)
last = time.time()
while True:
    now = time.time()
    if now - last > 0.0002:
        gaps.append((last, now - last))
    last = now
"""
WAITING = "import time\ndef wait_in_collective():\n    time.sleep(600)\nwait_in_collective()\n"


def rank_env(rank: int, local: int, world: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RANK": str(rank), "LOCAL_RANK": str(local),
            "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999", **(extra or {})}


def pause(times: int, python: str) -> None:
    pyspy = head_pyspy()
    with tempfile.TemporaryDirectory() as tmp:
        hook_dir = Path(tmp) / "clusterkit-0" / "stacks-hook-bench"
        hook_dir.mkdir(parents=True)
        (hook_dir / "sitecustomize.py").write_text(HOOK_SOURCE.read_text())
        rank = subprocess.Popen([python, "-c", GAPS], stdout=subprocess.PIPE, text=True,
                                env=rank_env(0, 0, 1, {"PYTHONPATH": str(hook_dir)}))
        assert rank.stdout is not None and rank.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        windows: dict[str, list[tuple[float, float]]] = {"nothing taken": [], "py-spy (blocking)": [],
                                                         "py-spy --nonblocking": [], "signal (launch hook)": []}
        took: dict[str, list[float]] = {k: [] for k in windows}
        for _ in range(times):
            for way in windows:
                start = time.time()
                if way == "nothing taken":
                    time.sleep(0.05)
                elif way == "signal (launch hook)":
                    dump_with_signal(hook_file(str(hook_dir), rank.pid), rank.pid)
                elif pyspy is not None:
                    dump_with_pyspy(str(pyspy), rank.pid, False, way.endswith("--nonblocking"), 10.0)
                windows[way].append((start, time.time()))
                took[way].append(time.time() - start)
                time.sleep(0.05)
        rank.send_signal(signal.SIGTERM)
        out, _ = rank.communicate(timeout=10)
    gaps = json.loads(out.strip().splitlines()[-1])
    print(f"pause each rank sees ({times} takings each way; a stand-in rank's longest stall inside each window)")
    for way, spans in windows.items():
        longest = [max([g for at, g in gaps if start <= at <= end] or [0.0]) * 1000 for start, end in spans]
        print(f"  {way:24s} median {statistics.median(longest):6.2f} ms  max {max(longest):6.2f} ms   "
              f"(the taking itself: median {statistics.median(took[way]) * 1000:.0f} ms)")


def one_shot_here(counts: list[int], python: str) -> None:
    print("one-shot dump on this machine (clusterkit stacks --dumps 1, no SSH)")
    for n in counts:
        ranks = [subprocess.Popen([python, "-c", WAITING], env=rank_env(r, r, n)) for r in range(n)]
        try:
            time.sleep(1.0)
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "clusterkit", "stacks", "--dumps", "1", "--json",
                                   "--job", "127.0.0.1:29999"], capture_output=True, text=True, cwd=REPO, check=False)
            wall = time.monotonic() - started
            doc = json.loads(done.stdout)
            dump = doc["dumps"][0]
            seen = [r for node in dump["nodes"] for r in node["ranks"]]
            paused = [r["paused_at_most_s"] for r in seen if r["paused_at_most_s"] is not None]
            print(f"  {n:3d} ranks: command {wall:5.2f}s, the dump {dump['seconds']:5.2f}s, each rank paused at most "
                  f"{max(paused) * 1000:.0f} ms (median {statistics.median(paused) * 1000:.0f} ms)")
        finally:
            for rank in ranks:
                rank.kill()
                rank.wait()


def one_shot_cluster(counts: list[int]) -> None:
    from tests.cluster.clusterkit_run import bootstrap, clusterkit
    from tests.cluster.harness import Cluster

    with Cluster.start(3) as cluster:
        python = cluster.install_python_env()
        done = bootstrap(cluster, python)
        assert done.rc == 0, done.stderr[-2000:]
        head = cluster.nodes[0]
        print(f"one-shot dump over SSH: 3 nodes x N ranks (from {head.name}, cluster up in "
              f"{cluster.startup_seconds:.1f}s; the first run puts the agent and py-spy on the nodes)")
        for n in counts:
            for index, node in enumerate(cluster.nodes):
                for local in range(n):
                    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in rank_env(index * n + local, local, 3 * n).items()
                                   if k != "PATH")
                    node.run(f"{env} nohup python3 -c {shlex.quote(WAITING)} > /dev/null 2>&1 < /dev/null &",
                             check=True)
            time.sleep(1.0)
            for attempt in ("first" if n == counts[0] else "once more", "again"):
                started = time.monotonic()
                ran = clusterkit(head, "stacks ~/hostfile --dumps 1 --json --connect-timeout 3 --job 127.0.0.1:29999")
                wall = time.monotonic() - started
                dump = json.loads(ran.stdout)["dumps"][0]
                found = sum(len(node["ranks"]) for node in dump["nodes"])
                print(f"  {n:3d} ranks per node ({found} found), {attempt}: command {wall:5.2f}s, the dump "
                      f"{dump['seconds']:5.2f}s")
            for node in cluster.nodes:
                node.run("pkill -f wait_in_collective")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--times", type=int, default=20, help="takings per way for the pause (default: 20)")
    parser.add_argument("--ranks", default="1,4,8", help="stand-in ranks per node, comma-separated (default: 1,4,8)")
    parser.add_argument("--python", default=sys.executable, help="the stand-in ranks' interpreter")
    parser.add_argument("--cluster", action="store_true", help="also over SSH on the namespace cluster (root)")
    args = parser.parse_args()
    counts = [int(n) for n in args.ranks.split(",")]
    pause(args.times, args.python)
    one_shot_here(counts, args.python)
    if args.cluster:
        one_shot_cluster(counts)


if __name__ == "__main__":
    main()
