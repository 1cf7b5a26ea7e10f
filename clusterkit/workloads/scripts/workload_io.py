"""What every workload script shares: its rank-tagged output, result lines, paths and deadlines.

Runs inside the training env (any torch/DeepSpeed, Python 3.8+), standard library only, so it can be
imported before torch. Nothing here imports clusterkit; clusterkit reads what this prints:

- every line a rank writes, from Python or from C++ (gloo, NCCL, ninja), starts with ``[ck:rank=R] ``
  (:func:`tag_output`), so the head can tell ranks apart even through pdsh, which adds ``host: ``;
- ``@@ck-progress@@ TEXT`` says where a rank is (the head shows it live);
- ``@@ck-result@@ JSON`` carries a result; ``@@ck-done@@`` is a rank's last word when all went well.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

RANK_TAG = "[ck:rank={rank}] "
PROGRESS = "@@ck-progress@@"
RESULT = "@@ck-result@@"
DONE = "@@ck-done@@"


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, ""))
    except ValueError:
        return default


def rank() -> int:
    """This process's global rank, as DeepSpeed's launcher set it (0 outside a launch)."""
    return env_int("RANK", 0)


def local_rank() -> int:
    return env_int("LOCAL_RANK", 0)


def world_size() -> int:
    return env_int("WORLD_SIZE", 1)


def tag_output(rank_number: int | None = None) -> None:
    """Prefix every line this process (and its children) writes to fd 1 and 2 with the rank tag.

    A forked helper reads a pipe that now stands in for stdout and stderr and writes each line,
    tagged, to the original stdout. Because it is a separate process, it still drains and flushes
    everything when this one dies from a signal (SIGKILL from the OOM killer included), and C++
    output that bypasses ``sys.stdout`` is tagged too. Call it first, before importing torch.
    """
    number = rank() if rank_number is None else rank_number
    prefix = RANK_TAG.format(rank=number).encode()
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper: never returns
        os.close(write_end)
        # Signals aimed at the rank's process group must not cut the helper short: it ends at EOF.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        out = os.dup(1)
        pending = b""
        while True:
            try:
                chunk = os.read(read_end, 65536)
            except InterruptedError:
                continue
            if not chunk:
                break
            pending += chunk
            lines = pending.split(b"\n")
            pending = lines.pop()
            if lines:
                _write_all(out, b"".join(prefix + line + b"\n" for line in lines))
        if pending:
            _write_all(out, prefix + pending + b"\n")
        os._exit(0)
    os.close(read_end)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            written = os.write(fd, data)
        except InterruptedError:
            continue
        except OSError:  # the reader is gone (pdsh killed): nothing left to do
            return
        data = data[written:]


def emit(marker: str, text: str = "") -> None:
    print((f"{marker} {text}").rstrip(), flush=True)


def progress(text: str) -> None:
    """Tell the head where this rank is (``all_reduce 1 MiB``, ``stage 2 step 3``)."""
    emit(PROGRESS, text)


def result(kind: str, payload: dict[str, Any]) -> None:
    """Print one result for the head: ``@@ck-result@@ {"kind": KIND, "rank": R, ...}``."""
    doc = {"kind": kind, "rank": rank(), "host": socket.gethostname()}
    doc.update(payload)
    emit(RESULT, json.dumps(doc, separators=(",", ":")))


def done() -> None:
    emit(DONE)


def exit_process(code: int) -> NoReturn:
    """Exit with ``code`` without C++ teardown: after ``destroy_process_group`` a rank that finished cleanly
    can still abort in torch's destructors ("terminate called without an active exception"), which the
    launcher reports as a failed rank."""
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)  # C extensions' printf (DeepSpeed's CPUAdam), buffered on a pipe
    os._exit(code)


def expand_path(template: str) -> str:
    """``{tmp}``, ``{uid}``, ``{user}`` and ``~`` expanded on this node (paths differ between nodes)."""
    try:
        import pwd

        user = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        user = os.environ.get("USER", "user")
    text = template.replace("{tmp}", tempfile.gettempdir()).replace("{uid}", str(os.getuid()))
    return str(Path(text.replace("{user}", user)).expanduser())


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every script takes: the launcher's --local_rank, the run id and the collective timeout."""
    parser.add_argument("--local_rank", type=int, default=local_rank(), help="set by DeepSpeed's launcher")
    parser.add_argument("--ck-run-id", default="", help="marks this run's processes (the head kills by it)")
    parser.add_argument("--timeout-s", type=float, default=120.0,
                        help="collective timeout: a rank waiting longer on a peer fails, naming itself")


class Stopwatch:
    """Named wall-clock intervals: ``with watch("import"): ...``; ``watch.seconds`` holds them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name = ""
        self._started = 0.0

    def __call__(self, name: str) -> Stopwatch:
        self._name = name
        return self

    def __enter__(self) -> Stopwatch:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._started
