"""The agent: runs on a node, gathers facts or probes, prints one JSON result.

:mod:`clusterkit.remote` ships this module, the collectors and pynvml to each node as a zipapp, so a
node needs nothing but a ``python3`` (3.8 or newer). Output is one line prefixed with
``RESULT_MARKER`` so a chatty login shell (``echo`` in ``.bashrc``) cannot corrupt the JSON.
Stdlib only, Python 3.8 syntax.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

RESULT_MARKER = "@@clusterkit-agent-result@@ "
AGENT_PROTOCOL = 1


def emit(result: Any) -> None:
    """Print the one result line the head looks for."""
    sys.stdout.write(RESULT_MARKER + json.dumps({"protocol": AGENT_PROTOCOL, "result": result}) + "\n")
    sys.stdout.flush()


def cmd_collect(args: argparse.Namespace) -> Any:
    from clusterkit.collect.node import CollectOptions, collect_node
    from clusterkit.facts import to_jsonable

    options = CollectOptions(section_timeout_s=args.timeout)
    if args.python:
        options.python = args.python
    if args.cwd:
        options.cwd = args.cwd
    return to_jsonable(collect_node(options))


def ssh_probe(host: str, timeout_s: float, port: int | None = None) -> dict[str, Any]:
    """Can this node log into ``host`` without a password and with a known host key?"""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={max(1, int(timeout_s))}"]
    if port:
        argv += ["-p", str(port)]
    argv += [host, "true"]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout_s + 2)
    except FileNotFoundError:
        return {"host": host, "ok": False, "error": "ssh client not installed"}
    except subprocess.TimeoutExpired:
        return {"host": host, "ok": False, "error": f"timed out after {timeout_s:g}s"}
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    return {"host": host, "ok": proc.returncode == 0, "rc": proc.returncode,
            "error": err[-1] if err and proc.returncode != 0 else "",
            "seconds": round(time.monotonic() - started, 3)}


def cmd_ssh_mesh(args: argparse.Namespace) -> Any:
    hosts = [h for h in args.hosts.split(",") if h]
    with ThreadPoolExecutor(max_workers=min(32, max(1, len(hosts)))) as pool:
        return list(pool.map(lambda h: ssh_probe(h, args.timeout, args.port), hosts))


def cmd_listen(args: argparse.Namespace) -> Any:
    """Hold ``port`` open for ``seconds`` and count connections: is the master port usable?"""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As torch's TCPStore does: a port left in TIME_WAIT by the last job is free for the next one.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("0.0.0.0", args.port))
    except OSError as exc:
        return {"port": args.port, "free": False, "error": exc.strerror or str(exc), "accepted": []}
    sock.listen(64)
    sock.settimeout(0.2)
    sys.stdout.write("listening\n")
    sys.stdout.flush()
    accepted: list[str] = []
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and (not args.expect or len(accepted) < args.expect):
        try:
            conn, addr = sock.accept()
        except socket.timeout:
            continue
        accepted.append(addr[0])
        conn.close()
    sock.close()
    return {"port": args.port, "free": True, "error": "", "accepted": accepted}


def cmd_connect(args: argparse.Namespace) -> Any:
    """Open a TCP connection to ``host:port`` with a timeout (master address reachability)."""
    started = time.monotonic()
    deadline = started + args.timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            remaining = max(0.1, deadline - time.monotonic())
            with socket.create_connection((args.host, args.port), timeout=remaining):
                return {"ok": True, "error": "", "seconds": round(time.monotonic() - started, 3)}
        except OSError as exc:
            last_error = exc.strerror or str(exc)
            time.sleep(0.2)  # the listener may still be starting
    return {"ok": False, "error": last_error or "timed out", "seconds": round(time.monotonic() - started, 3)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clusterkit-agent")
    sub = parser.add_subparsers(dest="command")
    collect = sub.add_parser("collect", help="collect NodeFacts")
    collect.add_argument("--python", help="training interpreter to inspect")
    collect.add_argument("--cwd", help="directory jobs launch from")
    collect.add_argument("--timeout", type=float, default=30.0)
    collect.set_defaults(func=cmd_collect)
    mesh = sub.add_parser("ssh-mesh", help="passwordless SSH from this node to each host")
    mesh.add_argument("--hosts", required=True)
    mesh.add_argument("--timeout", type=float, default=5.0)
    mesh.add_argument("--port", type=int)
    mesh.set_defaults(func=cmd_ssh_mesh)
    listen = sub.add_parser("listen", help="hold a TCP port open for a while")
    listen.add_argument("--port", type=int, required=True)
    listen.add_argument("--seconds", type=float, default=10.0)
    listen.add_argument("--expect", type=int, default=0, help="stop after this many connections")
    listen.set_defaults(func=cmd_listen)
    connect = sub.add_parser("connect", help="test a TCP connection")
    connect.add_argument("--host", required=True)
    connect.add_argument("--port", type=int, required=True)
    connect.add_argument("--timeout", type=float, default=5.0)
    connect.set_defaults(func=cmd_connect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "func", None):
        build_parser().print_help()
        return 2
    try:
        emit(args.func(args))
    except Exception as exc:  # the head turns this into a per-host error, with the reason
        sys.stdout.write(RESULT_MARKER + json.dumps({"protocol": AGENT_PROTOCOL,
                                                     "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(main())
