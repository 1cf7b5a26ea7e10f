#!/usr/bin/env python3
"""Start the namespace test cluster (tests/cluster/harness.py) by hand or around a command. Needs root.

    bench/cluster_up.py 3                        # start 3 nodes, print how to reach them, hold (Ctrl-C)
    bench/cluster_up.py 8 --env -- CMD ARGS...   # 8 nodes with /opt/ckenv; run CMD on the host; stop
    bench/cluster_up.py 4 --on node1 -- CMD      # run CMD inside node1 as the test user
    bench/cluster_up.py --clean                  # remove what a crashed run left behind

CMD gets CK_CLUSTER_HOSTFILE (on the host; inside --on nodes it is ~/hostfile), CK_CLUSTER_NODES,
CK_CLUSTER_IPS, CK_CLUSTER_USER, CK_CLUSTER_PASSWORD and CK_CLUSTER_STARTUP_SECONDS. The exit status
is CMD's. The start-up time goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster import system
from tests.cluster.harness import Cluster


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _environment(cluster: Cluster, hostfile: str) -> dict[str, str]:
    return {"CK_CLUSTER_HOSTFILE": hostfile, "CK_CLUSTER_NODES": " ".join(cluster.names),
            "CK_CLUSTER_IPS": " ".join(node.ip for node in cluster.nodes), "CK_CLUSTER_USER": cluster.user,
            "CK_CLUSTER_PASSWORD": cluster.password,
            "CK_CLUSTER_STARTUP_SECONDS": f"{cluster.startup_seconds:.2f}"}


def _hold(cluster: Cluster) -> int:
    print(f"{len(cluster.nodes)} nodes up; user {cluster.user}, password {cluster.password!r}; "
          f"hostfile {cluster.hostfile()}")
    for node in cluster.nodes:
        print(f"  {node.name:8} {node.ip:12} ssh {cluster.user}@{node.ip}   "
              f"root shell: nsenter -t {node.init_pid} -m -u -n -p -- bash   files: {node.root}")
    print("Ctrl-C stops the cluster.", flush=True)
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("nodes", type=int, nargs="?", default=3, help="how many nodes (default 3)")
    parser.add_argument("--prefix", default="node", help="node names are PREFIX1..PREFIXn (default node)")
    parser.add_argument("--env", action="store_true", help="install the training env at /opt/ckenv")
    parser.add_argument("--slots", type=int, default=1, help="slots per node in the hostfile (default 1)")
    parser.add_argument("--on", metavar="NODE", help="run the command inside NODE as the test user")
    parser.add_argument("--timeout", type=float, default=3600, help="command time limit in seconds")
    parser.add_argument("--clean", action="store_true", help="remove leftovers of crashed runs and exit")
    parser.epilog = "Everything after -- is the command (without one: hold until Ctrl-C)."
    argv = sys.argv[1:] if argv is None else argv
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if args.clean:
        system.check_host()
        system.RUN_LOCK.acquire(timeout=60)
        try:
            for removed in system.remove_leftovers():
                print(f"removed {removed}")
        finally:
            system.RUN_LOCK.release()
        return 0

    with Cluster.start(args.nodes, args.prefix) as cluster:
        print(f"cluster_up: {args.nodes} nodes started in {cluster.startup_seconds:.2f} s",
              file=sys.stderr, flush=True)
        if args.env:
            started = time.monotonic()
            cluster.install_python_env()
            print(f"cluster_up: /opt/ckenv installed in {time.monotonic() - started:.2f} s",
                  file=sys.stderr, flush=True)
        if not command:
            return _hold(cluster)
        if args.on:
            node = cluster.node(args.on)
            node.put_file(f"/home/{cluster.user}/hostfile", cluster.hostfile_text(args.slots))
            env = _environment(cluster, f"/home/{cluster.user}/hostfile")
            rc, out, err = node.run(shlex.join(command) if len(command) > 1 else command[0],
                                    timeout=args.timeout, env=env)
            sys.stdout.write(out)
            sys.stderr.write(err)
            return rc
        env = {**os.environ, **_environment(cluster, str(cluster.hostfile(args.slots)))}
        return subprocess.run(command, env=env, timeout=args.timeout, check=False).returncode


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
