#!/usr/bin/env python3
"""Env broadcast on the namespace cluster: relay time to 1, 2, 4, 8 nodes vs one transfer over one link.

One cluster of 9 nodes (bench1 is the head, bench2..bench9 the targets) is started and bootstrapped,
and a conda env with ~190 MB of incompressible payload (tests/synthetic_conda.py, made offline by
rattler) is installed on the head and packed there. Every node's link is then shaped to the same
rate (tbf, both directions). ROUNDS rounds time, in turn:

- one transfer of the archive over one link (``ssh bench2 'cat > FILE' < ARCHIVE``, the baseline);
- ``transfer.broadcast`` (the pipelined relay ``clusterkit env push`` uses) to the first 1, 2, 4, 8
  targets, their copies deleted before each run;

so slow spells of this shared 2-core machine hit every size alike. Then, once: a parallel copy from
the head to all 8 targets (what the relay avoids), and pack and unpack times of clusterkit's archive
(zstd level 3, threads) against conda-pack's defaults (tar.gz level 4, 1 thread) on the same env.
Prints a table; asserts nothing. All nodes share this machine's CPUs (ssh ciphers, hashing): on a
real cluster each node brings its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import synthetic_conda  # noqa: E402
from tests.cluster.clusterkit_run import bootstrap, clusterkit  # noqa: E402
from tests.cluster.harness import Cluster  # noqa: E402

PREFIX = "/opt/envs/ckbench"
PACKS = "/home/ckuser/packs"
STAGE = "/opt/envs/.bench-stage"

DRIVER = """
import json, sys, time
from pathlib import Path
from clusterkit.cluster.remote import SshSettings
from clusterkit.cluster.remote.transfer import RemoteFile, broadcast, relay_options
archive, path, size, sha, hosts = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5].split(",")
settings = SshSettings(connect_timeout_s=5)
started = time.perf_counter()
done = broadcast(Path(archive), RemoteFile(path, size, sha), hosts, settings, relay_options(settings))
print(json.dumps({"seconds": time.perf_counter() - started, "ok": all(d.ok for d in done.values()),
                  "errors": {h: d.error for h, d in done.items() if not d.ok}}))
"""


def run(node, cmd: str, timeout: float = 900) -> str:  # type: ignore[no-untyped-def]
    result = node.run(cmd, timeout=timeout)
    if result.rc != 0:
        raise SystemExit(f"{node.name}: `{cmd[:200]}` failed ({result.rc}): {result.stderr[-2000:]}")
    return str(result.stdout)


def timed(node, cmd: str, timeout: float = 900) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    run(node, cmd, timeout)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", default="200mbit", help="tc rate of every node's link (default 200mbit)")
    # tbf cuts in software every packet larger than its bucket, and TCP hands a veth 64 KB (GSO) packets:
    # with a 32 KB bucket at 200mbit the 8-node relay spent 40% of this machine's CPU segmenting, a cost
    # no switch port has. 256 KB is 10 ms of a 200 Mbit/s link.
    parser.add_argument("--burst", default="2mbit", help="tbf bucket of every link (default 2mbit = 256 KB)")
    parser.add_argument("--payload-mb", type=int, default=184, help="incompressible payload in the env (MB)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--sizes", default="1,2,4,8", help="target counts (default 1,2,4,8)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    channel = synthetic_conda.build_channel(args.payload_mb)
    with Cluster.start(max(sizes) + 1, "bench") as cluster:
        head, targets = cluster.nodes[0], cluster.nodes[1:]
        python = cluster.install_python_env()
        booted = bootstrap(cluster, python)
        if booted.rc != 0:
            raise SystemExit(f"bootstrap failed:\n{booted.stdout[-2000:]}{booted.stderr[-2000:]}")
        for node in cluster.nodes:
            node.run(f"mkdir -p /opt/envs && chown {cluster.user}: /opt/envs", user="root", check=True)
        synthetic_conda.install_env(channel, head.host_path(PREFIX), as_prefix=PREFIX,
                                    specs=("python", "ckdemo", "ckpayload"))
        head.run(f"chown -R {cluster.user}: {PREFIX}", user="root", check=True)

        # ---- pack and unpack: clusterkit (zstd, threads) vs conda-pack's defaults (gzip level 4, 1 thread)
        started = time.perf_counter()
        packed = clusterkit(head, f"env pack {PREFIX} -o {PACKS} --json", timeout=900)
        ours_pack = time.perf_counter() - started
        if packed.rc != 0:
            raise SystemExit(packed.stderr[-3000:])
        manifest = json.loads(packed.stdout)
        archive = f"{PACKS}/{manifest['archive']}"
        conda_pack = shlex.quote(str(Path(sys.executable).parent / "conda-pack"))
        default_pack = timed(head, f"{conda_pack} -p {PREFIX} -o {PACKS}/default.tar.gz -q")
        default_size = int(run(head, f"stat -c %s {PACKS}/default.tar.gz"))
        unpack = "rm -rf /opt/envs/u && mkdir /opt/envs/u && tar {flags} -xf {archive} -C /opt/envs/u && " \
                 "/opt/envs/u/bin/python /opt/envs/u/bin/conda-unpack"
        ours_unpack = timed(head, unpack.format(flags="-I 'zstd -d'", archive=archive))
        default_unpack = timed(head, unpack.format(flags="-z", archive=f"{PACKS}/default.tar.gz"))
        run(head, "rm -rf /opt/envs/u")
        head.put_file("/home/ckuser/driver.py", DRIVER)

        # ---- transfers, every link shaped alike
        for node in cluster.nodes:
            node.shape(args.rate, burst=args.burst)
        size, sha = manifest["size"], manifest["sha256"]
        staged = f"{STAGE}/{manifest['archive']}"
        baseline: list[float] = []
        relay: dict[int, list[float]] = {n: [] for n in sizes}

        def clean() -> None:
            for node in targets:
                node.run(f"rm -rf {STAGE}", check=True)

        for _ in range(args.rounds):
            clean()
            baseline.append(timed(head, f"ssh -o BatchMode=yes {targets[0].name} "
                                        f"'mkdir -p {STAGE} && cat > {staged}' < {archive}"))
            for n in sizes:
                clean()
                out = run(head, f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} ~/driver.py "
                                f"{archive} {staged} {size} {sha} {','.join(t.name for t in targets[:n])}")
                result = json.loads(out.strip().splitlines()[-1])
                if not result["ok"]:
                    raise SystemExit(f"broadcast to {n} failed: {result['errors']}")
                relay[n].append(result["seconds"])
        clean()
        parallel = timed(head, " & ".join(f"ssh -o BatchMode=yes {t.name} 'mkdir -p {STAGE} && cat > {staged}' "
                                          f"< {archive}" for t in targets[:max(sizes)]) + " & wait")
        for node in cluster.nodes:
            node.unshape()
        # The same relay with no link limit at all: where it is not faster, the CPUs, not the links, set the pace.
        clean()
        out = run(head, f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} ~/driver.py "
                        f"{archive} {staged} {size} {sha} {','.join(t.name for t in targets[:max(sizes)])}")
        unshaped = json.loads(out.strip().splitlines()[-1])["seconds"]

    one = statistics.median(baseline)
    print(f"load average at the end (this machine's 2 CPUs are shared): {os.getloadavg()[1]:.1f} (5 min)")
    print(f"archive {size / 1e6:.1f} MB, every link {args.rate} (tbf bucket {args.burst}); {args.rounds} interleaved "
          "rounds, medians")
    print(f"one transfer over one link (ssh cat): {one:6.2f} s   (runs: {', '.join(f'{t:.2f}' for t in baseline)})")
    print(f"{'targets':>8} {'relay s':>9} {'ratio':>7}   runs")
    for n in sizes:
        t = statistics.median(relay[n])
        print(f"{n:>8} {t:9.2f} {t / one:7.2f}   {', '.join(f'{x:.2f}' for x in relay[n])}")
    print(f"parallel copy from the head to {max(sizes)}: {parallel:.2f} s, ratio {parallel / one:.2f}")
    print(f"relay to {max(sizes)} with no link limit: {unshaped:.2f} s ({size / 1e6 / unshaped:.1f} MB/s through "
          f"{max(sizes)} hops on this machine's CPUs)")
    print(f"pack   clusterkit (zstd 3, threads): {ours_pack:6.2f} s, {size / 1e6:.1f} MB   "
          f"conda-pack defaults (gzip 4, 1 thread): {default_pack:6.2f} s, {default_size / 1e6:.1f} MB")
    print(f"unpack clusterkit .tar.zst + conda-unpack: {ours_unpack:6.2f} s   "
          f"conda-pack default .tar.gz + conda-unpack: {default_unpack:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
