"""The agent: runs on a node, gathers facts and probes, prints one JSON result.

:mod:`clusterkit.cluster.remote` ships this module, the collectors and pynvml to each node as a zipapp, so a
node needs nothing but a ``python3`` (3.8 or newer). Output is one line prefixed with
``RESULT_MARKER`` so a chatty login shell (``echo`` in ``.bashrc``) cannot corrupt the JSON.

``collect`` does everything a doctor run needs from a node in one invocation: the facts, and, run
beside them in threads, SSH logins to other nodes, a listener on the master port (first host) and a
connection to it (every host). One SSH session per node keeps the fan-out cheap.
Stdlib only, Python 3.8 syntax.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from clusterkit.node.facts import (
    SCHEMA_VERSION,
    CollectReply,
    ConnectProbe,
    PortHoldProbe,
    SshLoginProbe,
    to_jsonable,
)

RESULT_MARKER = "@@clusterkit-agent-result@@ "
#: The wire: what a reply holds (``collect`` sends a CollectReply). The head refuses other numbers.
AGENT_PROTOCOL = 3
#: At most this many of our SSH logins at once: sshd's MaxStartups (10:30:100) drops bursts.
SSH_CONCURRENCY = 8


def emit(result: Any) -> None:
    """Print the one result line the head looks for; ``clock_unix`` is read just before it."""
    payload = {"protocol": AGENT_PROTOCOL, "schema_version": SCHEMA_VERSION, "result": to_jsonable(result),
               "clock_unix": time.time()}
    sys.stdout.write(RESULT_MARKER + json.dumps(payload) + "\n")
    sys.stdout.flush()


def ssh_login(host: str, timeout_s: float, port: int | None = None) -> SshLoginProbe:
    """Can this node log into ``host`` without a password and with a known host key?"""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={max(1, int(timeout_s))}"]
    if port:
        argv += ["-p", str(port)]
    started = time.monotonic()
    try:
        # Prefer the cheap classic key exchange: the post-quantum default costs several times the CPU
        # per login and says nothing more about whether the login works. Older clients that do not
        # know the '^' syntax get the plain command.
        proc = subprocess.run([*argv, "-o", "KexAlgorithms=^curve25519-sha256", host, "true"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s + 2)
        if proc.returncode == 255 and b"KexAlgorithms" in proc.stderr:
            proc = subprocess.run([*argv, host, "true"], stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout_s + 2)
    except FileNotFoundError:
        return SshLoginProbe(host, False, "ssh client not installed")
    except subprocess.TimeoutExpired:
        return SshLoginProbe(host, False, f"timed out after {timeout_s:g}s", seconds=timeout_s)
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    failed = proc.returncode != 0
    return SshLoginProbe(host, not failed, (err[-1] if err else f"exit {proc.returncode}") if failed else "",
                         proc.returncode, round(time.monotonic() - started, 3))


def ssh_logins(hosts: list[str], timeout_s: float, port: int | None = None) -> list[SshLoginProbe]:
    from concurrent.futures import ThreadPoolExecutor  # only nodes that log in pay for the import

    with ThreadPoolExecutor(max_workers=max(1, min(SSH_CONCURRENCY, len(hosts)))) as pool:
        return list(pool.map(lambda h: ssh_login(h, timeout_s, port), hosts))


def hold_port(port: int, seconds: float, expect: int = 0) -> PortHoldProbe:
    """Hold ``port`` open for ``seconds`` (or until ``expect`` connections): is the master port usable?"""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As torch's TCPStore does: a port left in TIME_WAIT by the last job is free for the next one.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("0.0.0.0", port))
    except OSError as exc:
        sock.close()
        return PortHoldProbe(port, False, exc.strerror or str(exc))
    sock.listen(128)
    sock.settimeout(0.2)
    accepted: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (not expect or len(accepted) < expect):
        try:
            conn, addr = sock.accept()
        except socket.timeout:
            continue
        accepted.append(addr[0])
        conn.close()
    sock.close()
    return PortHoldProbe(port, True, "", accepted)


def reach(host: str, port: int, timeout_s: float) -> ConnectProbe:
    """Open a TCP connection to ``host:port``, retrying until ``timeout_s`` (the listener may be starting)."""
    started = time.monotonic()
    deadline = started + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())):
                return ConnectProbe(True, "", round(time.monotonic() - started, 3))
        except OSError as exc:
            last_error = exc.strerror or str(exc)
            time.sleep(0.2)
    return ConnectProbe(False, last_error or "timed out", round(time.monotonic() - started, 3))


def _in_thread(results: dict[str, Any], name: str, func: Callable[[], Any],
               failed: Callable[[str], Any]) -> threading.Thread:
    def run() -> None:
        try:
            results[name] = func()
        except Exception as exc:  # a failed probe is reported, the facts still go out
            results[name] = failed(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _split(text: str | None) -> list[str]:
    return [part for part in (text or "").split(",") if part]


def ssh_server_address(ssh_connection: str) -> str | None:
    """``ADDR:PORT`` of the sshd this session came in through, from ``SSH_CONNECTION`` (``client_addr
    client_port server_addr server_port``); None outside an SSH session."""
    words = ssh_connection.split()
    return f"{words[2]}:{words[3]}" if len(words) == 4 else None


def cmd_collect(args: argparse.Namespace) -> CollectReply:
    from clusterkit.node.collect.node import CollectOptions, collect_node

    probes: dict[str, Any] = {}
    threads = []
    if args.listen_port:  # first: the others' connections retry until it is up
        threads.append(_in_thread(probes, "listen", lambda: hold_port(
            args.listen_port, args.listen_seconds, args.listen_expect),
            lambda why: PortHoldProbe(args.listen_port, False, why)))
    if args.ssh_check:
        hosts = _split(args.ssh_check)
        threads.append(_in_thread(probes, "ssh", lambda: ssh_logins(hosts, args.ssh_timeout, args.ssh_port),
                                  lambda why: [SshLoginProbe(h, False, why) for h in hosts]))
    if args.connect:
        host, _, port = args.connect.rpartition(":")
        threads.append(_in_thread(probes, "connect", lambda: reach(host, int(port), args.connect_timeout),
                                  lambda why: ConnectProbe(False, why)))
    sshd_address = args.sshd_address
    if sshd_address == "ssh":
        sshd_address = ssh_server_address(os.environ.get("SSH_CONNECTION", ""))
    options = CollectOptions(section_timeout_s=args.timeout, use_probe_cache=not args.fresh,
                             peers=_split(args.peers), sshd_address=sshd_address)
    if args.python:
        options.python = args.python
    if args.cwd:
        options.cwd = args.cwd
    options.script = args.script
    facts = collect_node(options)
    deadline = time.monotonic() + args.timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return CollectReply(facts, ssh=probes.get("ssh"), listen=probes.get("listen"), connect=probes.get("connect"))


def cmd_ssh_mesh(args: argparse.Namespace) -> Any:
    return ssh_logins(_split(args.hosts), args.timeout, args.port)


def stream_interval(text: str) -> float:
    """``--interval`` of ``stream``: a number of seconds within the sampler's bounds (argparse type)."""
    from clusterkit.node.collect.sampler import MAX_INTERVAL_S, MIN_INTERVAL_S, valid_interval

    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not valid_interval(seconds):
        raise argparse.ArgumentTypeError(f"{text}: must be {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} seconds")
    return seconds


def cmd_stream(args: argparse.Namespace) -> None:
    from clusterkit.node.collect.sampler import stream

    stream(args.interval, args.count, args.slow_every, args.nvml_timeout)


def cmd_stacks(args: argparse.Namespace) -> Any:
    import shutil

    from clusterkit.node.collect.pystacks import take

    return take(args.pyspy or shutil.which("py-spy"), via=args.via, native=args.native,
                nonblocking=args.nonblocking, timeout_s=args.timeout, sample_s=args.sample, rate=args.rate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clusterkit-agent")
    sub = parser.add_subparsers(dest="command")
    collect = sub.add_parser("collect", help="collect NodeFacts, and optionally probe other nodes meanwhile")
    collect.add_argument("--python", help="training interpreter to inspect")
    collect.add_argument("--cwd", help="directory jobs launch from")
    collect.add_argument("--script", help="training script the launch runs (relative to --cwd)")
    collect.add_argument("--timeout", type=float, default=30.0)
    collect.add_argument("--fresh", action="store_true", help="probe the Python env even if a cached probe is valid")
    collect.add_argument("--peers", help="hostfile names whose known_hosts entries to read")
    collect.add_argument("--sshd-address", metavar="ADDR:PORT",
                         help="where the head reached this node's sshd: read the host keys it serves there "
                              "(ssh: the server end of this session's SSH_CONNECTION)")
    collect.add_argument("--ssh-check", metavar="HOSTS", help="log into these hosts with ssh -o BatchMode=yes")
    collect.add_argument("--ssh-timeout", type=float, default=5.0)
    collect.add_argument("--ssh-port", type=int)
    collect.add_argument("--listen-port", type=int, help="hold this port open (the master's rendezvous port)")
    collect.add_argument("--listen-seconds", type=float, default=10.0)
    collect.add_argument("--listen-expect", type=int, default=0, help="stop listening after this many connections")
    collect.add_argument("--connect", metavar="HOST:PORT", help="open a TCP connection to the master port")
    collect.add_argument("--connect-timeout", type=float, default=5.0)
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
    listen.set_defaults(func=lambda a: hold_port(a.port, a.seconds, a.expect))
    connect = sub.add_parser("connect", help="test a TCP connection")
    connect.add_argument("--host", required=True)
    connect.add_argument("--port", type=int, required=True)
    connect.add_argument("--timeout", type=float, default=5.0)
    connect.set_defaults(func=lambda a: reach(a.host, a.port, a.timeout))
    stacks = sub.add_parser("stacks", help="every training rank's Python stack (py-spy, or the launch hook's "
                                           "signal), optionally sampled over some seconds")
    stacks.add_argument("--py-spy", dest="pyspy", help="the py-spy binary (default: the first on PATH)")
    stacks.add_argument("--via", choices=("auto", "py-spy", "signal"), default="auto")
    stacks.add_argument("--native", action="store_true", help="native frames too (py-spy)")
    stacks.add_argument("--nonblocking", action="store_true", help="never stop a rank while reading it")
    stacks.add_argument("--timeout", type=float, default=10.0, help="seconds per rank")
    stacks.add_argument("--sample", type=float, default=0.0, help="also py-spy record each rank this many seconds")
    stacks.add_argument("--rate", type=int, default=50, help="samples per second with --sample")
    stacks.set_defaults(func=cmd_stacks)
    sample = sub.add_parser("stream", help="print a monitor sample every interval until the channel closes "
                                           "(stdout breaks, or stdin, a pipe or socket, reaches its end)")
    sample.add_argument("--interval", type=stream_interval, default=1.0)
    sample.add_argument("--count", type=int, default=0, help="stop after this many samples (0: never)")
    sample.add_argument("--slow-every", type=int, default=0, help="PCIe throughput and energy every N samples")
    sample.add_argument("--nvml-timeout", type=float, default=2.0)
    sample.set_defaults(func=cmd_stream, streams=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "func", None):
        build_parser().print_help()
        return 2
    if getattr(args, "streams", False):  # samples go out as they come, with no result line
        args.func(args)
        return 0
    try:
        emit(args.func(args))
    except Exception as exc:  # the head turns this into a per-host error, with the reason
        sys.stdout.write(RESULT_MARKER + json.dumps({"protocol": AGENT_PROTOCOL, "schema_version": SCHEMA_VERSION,
                                                     "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(main())
