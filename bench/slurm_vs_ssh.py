#!/usr/bin/env python3
"""`clusterkit doctor`, `clusterkit env push` and `clusterkit monitor` over SSH and over Slurm on the same
nodes: wall time and the head's CPU time.

One namespace cluster of N compute nodes plus a head (a login node outside the hostfile and the
allocations, as on a real cluster), with Slurm on it (tests/cluster/slurm.py) and the head's key
authorized on every node and their host keys in its known_hosts (what the SSH transport needs). With
env push, the nodes get the head's key pair too: its relay has each node log in to the next. For each
size (1, 3 and N nodes by default) the head runs, in turn within each round:

  doctor   ssh:   clusterkit doctor hostfile-K --json              (an SSH session and agent run per node)
           slurm: salloc -w bench[1-K] clusterkit doctor --json     (one srun step with a task per node)
  env push ssh:   clusterkit env push hostfile-K ARCHIVE --json     (the relay, then unpack and verify per node)
           slurm: salloc -w bench[1-K] clusterkit env push ARCHIVE  (sbcast, then one srun step per stage)
  monitor  ssh:   clusterkit monitor hostfile-K --once --json       (an SSH channel per node streaming samples)
           slurm: salloc -w bench[1-K] clusterkit monitor --once    (an srun step per node streaming samples)

env push sends a real conda env (tests/cluster/packed_env.py: rattler, offline, packed on the head)
and every push is a whole one: the env and its staged archive are removed from the nodes before it
(not timed). The monitor runs its own command path (allocation, agent, a stream per node at
`--interval 1`, the report) with its round held for `--monitor-seconds` instead of ending at the
second sample (MONITOR_FOR): its head CPU is startup plus that long of streaming, and a run counts only
when every node was up at the end.

The head's CPU time is user+system of clusterkit and everything it waited for (srun included; salloc
itself and slurmctld are not the head's work, slurmctld's share is printed apart). One warm-up per
size and transport ships the agent and fills the probe caches, then ROUNDS rounds interleave sizes and
transports, so slow spells of this shared machine hit all alike; the table gives medians. Then a
least-squares line cpu = a + b * nodes per transport, extrapolated to 1,000 nodes. All nodes share this
machine's cores, so wall times grow with nodes here; the head's CPU is what this measures. Prints;
asserts nothing. Needs root.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster.harness import Cluster  # noqa: E402
from tests.cluster.node import Node  # noqa: E402
from tests.cluster.packed_env import PREFIX, STAGED_DIR, install_and_pack, make_env_parents  # noqa: E402
from tests.cluster.slurm import SlurmCluster  # noqa: E402

#: ``clusterkit ARGS`` (after SECONDS) with ``monitor --once``'s round held for SECONDS of streaming.
MONITOR_FOR = """
import sys, time
from clusterkit import cli
from clusterkit.commands import monitor
seconds = float(sys.argv.pop(1))
def hold(source, deadline_s):
    source.start()
    time.sleep(seconds)
    source.tick()
monitor.wait_for_round = hold
sys.exit(cli.main(sys.argv[1:]))
"""
#: Runs a command and prints its wall time and the CPU time of it and every process it waited for.
MEASURE = ("import resource, subprocess, sys, time; t = time.monotonic(); "
           "done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True); rc = done.returncode; "
           "rc and sys.stderr.write(done.stdout[-3000:]); "
           "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "print('@@measure', rc, time.monotonic() - t, u.ru_utime + u.ru_stime)")


def ctld_cpu(slurm: SlurmCluster) -> float:
    """slurmctld's CPU seconds so far (utime + stime from /proc)."""
    proc = slurm._slurmctld
    if proc is None:
        return 0.0
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_measured(slurm: SlurmCluster, head: Node, command: str, ok: tuple[int, ...] = (0, 1)
                 ) -> tuple[float, float, float]:
    """(wall s, head CPU s, slurmctld CPU s) of ``command`` run on the head; it must exit with one of ``ok``."""
    before = ctld_cpu(slurm)
    out = head.run(command, timeout=900)
    after = ctld_cpu(slurm)
    for line in out.stdout.splitlines():
        if line.startswith("@@measure"):
            _, rc, wall, cpu = line.split()
            if int(rc) not in ok:
                raise SystemExit(f"`{command}` exited {rc}: {out.stderr[-2000:]}")
            return float(wall), float(cpu), after - before
    raise SystemExit(f"`{command}` printed no measurement: {out.stdout[-1000:]} {out.stderr[-2000:]}")


def authorize_head(head: Node, nodes: list[Node]) -> None:
    """The head logs into every node with its key, knowing their host keys (no bootstrap: no mesh)."""
    head.run("mkdir -p -m 700 ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519", check=True)
    key = head.read_file(f"/home/{head.cluster.user}/.ssh/id_ed25519.pub")
    known = "".join(f"{n.name},{n.ip} {' '.join(n.host_public_key().split()[:2])}\n" for n in nodes)
    head.put_file(f"/home/{head.cluster.user}/.ssh/known_hosts", known)
    for node in nodes:
        node.run("mkdir -p -m 700 ~/.ssh", check=True)
        node.put_file(f"/home/{node.cluster.user}/.ssh/authorized_keys", key, mode=0o600)


def share_head_keys(head: Node, nodes: list[Node]) -> None:
    """Every node gets the head's key pair and known_hosts: env push's relay hops log in to the next node."""
    home = f"/home/{head.cluster.user}/.ssh"
    files = {name: head.read_file(f"{home}/{name}") for name in ("id_ed25519", "id_ed25519.pub", "known_hosts")}
    for node in nodes:
        for name, text in files.items():
            node.put_file(f"{home}/{name}", text, mode=0o600 if name == "id_ed25519" else 0o644)


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares a, b of y = a + b * x."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0
    return mean_y - slope * mean_x, slope


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # through the context managers: the cluster and Slurm are stopped


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,3,16", help="node counts (default 1,3,16)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up (default 3)")
    parser.add_argument("--timeout", type=float, default=120, help="doctor's per-node deadline (default 120: "
                        "every node's agent shares this machine's cores)")
    parser.add_argument("--commands", default="doctor,env-push",
                        help="what to measure, of doctor, env-push and monitor (default: doctor,env-push)")
    parser.add_argument("--monitor-seconds", type=float, default=30,
                        help="how long each monitor run streams (default 30, at one sample a second)")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    commands = [c.strip() for c in args.commands.split(",") if c.strip()]
    if not set(commands) <= {"doctor", "env-push", "monitor"}:
        parser.error(f"--commands: {args.commands}: choose from doctor, env-push, monitor")
    biggest = max(sizes)
    python = sys.executable
    transports = ("ssh", "slurm")
    results: dict[tuple[str, str, int], list[tuple[float, float, float]]] = {}
    with Cluster.start(biggest + 1, "bench") as cluster, SlurmCluster.start(cluster) as slurm:
        env_python = cluster.install_python_env() if "doctor" in commands else ""
        computes, head = cluster.nodes[:biggest], cluster.nodes[biggest]
        hostfile = "".join(f"{n.name} slots=1\n" for n in computes)
        authorize_head(head, computes)
        archive = ""
        if "env-push" in commands:
            share_head_keys(head, computes)
            make_env_parents(cluster)
            archive, _ = install_and_pack(cluster, head)
        lines = hostfile.splitlines()
        for size in sizes:
            head.put_file(f"/home/{cluster.user}/hostfile-{size}", "\n".join(lines[:size]) + "\n")
        measured = f"cd {shlex.quote(str(REPO))} && {shlex.quote(python)} -c {shlex.quote(MEASURE)} " \
                   f"{shlex.quote(python)} -m clusterkit"
        streaming = f"cd {shlex.quote(str(REPO))} && {shlex.quote(python)} -c {shlex.quote(MEASURE)} " \
                    f"{shlex.quote(python)} -c {shlex.quote(MONITOR_FOR)} {args.monitor_seconds:g}"
        clusterkit = {"doctor": f"{measured} doctor --json --timeout {args.timeout:g} --python {env_python}",
                      "env-push": f"{measured} env push --json --connect-timeout 10 {archive}",
                      "monitor": f"{streaming} monitor --once --json --interval 1 --connect-timeout 10"}

        def command(what: str, transport: str, size: int) -> str:
            if transport == "ssh":
                return clusterkit[what].replace(f" {what.replace('-', ' ')} ",
                                                f" {what.replace('-', ' ')} ~/hostfile-{size} ", 1)
            nodelist = ",".join(n.name for n in computes[:size])
            return f"salloc --quiet -N{size} -w {nodelist} /bin/bash -c {shlex.quote(clusterkit[what])}"

        def measure(what: str, transport: str, size: int) -> tuple[float, float, float]:
            if what == "env-push":
                for node in computes[:size]:
                    node.run(f"rm -rf {PREFIX} {STAGED_DIR}", check=True)
            # doctor's findings (exit 1) are fine here; a push that failed on a node would not measure a push,
            # nor would a monitor that lost a node measure its streams.
            return run_measured(slurm, head, command(what, transport, size), (0, 1) if what == "doctor" else (0,))

        for what in commands:
            for size in sizes:
                for transport in transports:
                    measure(what, transport, size)  # warm-up
        for _ in range(args.rounds):
            for what in commands:
                for size in sizes:
                    for transport in transports:
                        results.setdefault((what, transport, size), []).append(measure(what, transport, size))
                        time.sleep(0.5)
    for what in commands:
        print(f"clusterkit {what.replace('-', ' ')} from a head outside the nodes, median of {args.rounds} (warm; "
              "one shared 2-core machine runs every node)")
        print(f"{'nodes':>5}  {'transport':9}  {'wall s':>7}  {'head CPU s':>10}  {'slurmctld CPU s':>15}")
        medians: dict[tuple[str, int], tuple[float, float, float]] = {}
        for size in sizes:
            for transport in transports:
                runs = results[(what, transport, size)]
                medians[(transport, size)] = tuple(statistics.median(r[i] for r in runs) for i in range(3))  # type: ignore[assignment]
                wall, cpu, ctld = medians[(transport, size)]
                shown = f"{ctld:15.2f}" if transport == "slurm" else f"{'-':>15}"
                print(f"{size:>5}  {transport:9}  {wall:7.2f}  {cpu:10.2f}  {shown}")
        print("\nhead CPU = a + b * nodes (least squares over the sizes above), extrapolated:")
        for transport in transports:
            a, b = fit([(size, medians[(transport, size)][1]) for size in sizes])
            print(f"  {transport:6} a = {a:.3f} s, b = {b * 1000:.1f} ms/node -> 1,000 nodes: {a + 1000 * b:.1f} s"
                  + (f" ({100 * b / args.monitor_seconds:.2f}% of a core per node while streaming)"
                     if what == "monitor" else ""))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
