"""Every training rank's Python stack on this node (``agent stacks``), for ``clusterkit stacks``.

Ranks are found as the monitor's sampler finds them (``RANK`` and ``LOCAL_RANK`` in their environment, a
forked worker of a rank left out). Each rank's stack is taken in one of two ways, all ranks at once:

- **py-spy** (``py-spy dump --json``): reads the rank's memory from outside, which needs ptrace rights
  over it (root, CAP_SYS_PTRACE, or its user where Yama's ``ptrace_scope`` is 0). By default py-spy stops
  the rank while it reads (consistent stacks); ``nonblocking`` never stops it.
- **signal**: a rank started by ``clusterkit launch`` carries a hook (``stacks_hook``) that registered
  ``faulthandler`` for ``HOOK_SIGNAL`` with a per-rank file; the rank's own C signal handler writes every
  thread's stack there (even while the rank blocks in a collective), and this reads what it wrote. No
  ptrace rights needed, only the right to signal (the ranks' user). The signal is sent only to a rank
  whose hook file exists: without the hook, the signal's default action would end the rank.

A stopped rank (state ``T``: SIGSTOP, a frozen node) is not read at all: py-spy would wait for it.
``sample`` runs ``py-spy record`` over every rank for some seconds instead (never stopping them) and
returns each rank's folded stacks with their sample counts.

Stdlib only, Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from clusterkit.node.collect.sampler import ProcReader

#: The signal the launch hook listens on (SIGUSR2: torch and DeepSpeed leave it alone; SIGUSR1 is
#: taken by some launchers for preemption notices).
HOOK_SIGNAL = signal.SIGUSR2
#: A path element that marks the hook's directory in a rank's ``PYTHONPATH``.
HOOK_DIR_PREFIX = "stacks-hook-"
#: What py-spy says when it may not read the process (no ptrace rights).
DENIED_WORDS = ("Permission Denied", "Operation not permitted", "permission denied", "EPERM")
#: How long a rank's own handler may take to write its stacks after the signal.
SIGNAL_WAIT_S = 2.0
#: Lines of source kept per frame (the line itself).
CODE_CHARS = 160


def hook_file(hook_dir: str, pid: int) -> str:
    """Where the hook of the rank ``pid`` (its directory ``hook_dir`` on PYTHONPATH) writes its stacks."""
    return str(Path(hook_dir).parent / "stacks" / f"{socket.gethostname()}-{pid}.txt")


def rank_environment(pid: int, proc_root: str = "/proc") -> dict[str, str]:
    """The environment the rank started with (empty where it cannot be read)."""
    try:
        with open(f"{proc_root}/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in pairs}


def gpu_of(env: dict[str, str], local: int) -> int | None:
    """The physical GPU index the rank uses by the launchers' convention (``cuda:LOCAL_RANK`` within
    ``CUDA_VISIBLE_DEVICES``); None on a node without NVIDIA devices."""
    if not Path("/dev/nvidiactl").exists():
        return None
    visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and local < len(visible):
        try:
            return int(visible[local])
        except ValueError:
            return None  # GPU UUIDs: the index is not known here
    return local


def find_ranks(proc_root: str = "/proc") -> list[dict[str, Any]]:
    """Every training rank on this node: pid, rank, local rank, world size, job, state, uid, GPU, and its
    hook file where it carries the launch hook."""
    ranks = []
    for found in ProcReader(proc_root).ranks(time.time()):
        env = rank_environment(found["pid"], proc_root)
        hook = next((p for p in env.get("PYTHONPATH", "").split(":")
                     if Path(p).name.startswith(HOOK_DIR_PREFIX)), None)
        try:
            uid = Path(f"{proc_root}/{found['pid']}").stat().st_uid
        except OSError:
            uid = None
        ranks.append({"pid": found["pid"], "rank": found["rank"], "local": found["local"], "world": found["world"],
                      "job": found["job"], "state": found["state"], "uid": uid, "gpu": gpu_of(env, found["local"]),
                      "hook": hook_file(hook, found["pid"]) if hook else None,
                      "started_at": process_start(found["pid"], proc_root)})
    return ranks


def process_start(pid: int, proc_root: str = "/proc") -> float | None:
    """When the process started (Unix time), from its start in clock ticks after boot."""
    try:
        with open(f"{proc_root}/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"{proc_root}/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + int(fields[19]) / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def catches(pid: int, signum: int, proc_root: str = "/proc") -> bool:
    """The process has a handler for ``signum`` (``SigCgt`` in its status): sent to one that has none,
    SIGUSR2 ends it."""
    try:
        with open(f"{proc_root}/{pid}/status") as f:
            mask = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
        return bool(int(mask, 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError, StopIteration):
        return False


def hook_is_live(rank: dict[str, Any], proc_root: str = "/proc") -> bool:
    """The rank's hook file exists, was made by this process (not left by an earlier one with its pid),
    and the process catches the signal: only then may it be signalled, as an unhooked rank dies of it."""
    try:
        made = Path(rank["hook"]).stat().st_mtime
    except (OSError, TypeError):
        return False
    if rank.get("started_at") is not None and made < rank["started_at"] - 1.0:
        return False
    return catches(int(rank["pid"]), HOOK_SIGNAL, proc_root)


def source_line(path: str, line: int) -> str:
    """The text of ``path``'s line ``line`` (stripped), or "" where it cannot be read."""
    if line <= 0 or not path or path.startswith("<"):
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, text in enumerate(f, 1):
                if number == line:
                    return text.strip()[:CODE_CHARS]
    except OSError:
        pass
    return ""


def _frame(name: str, path: str, line: int, short: str = "") -> dict[str, Any]:
    return {"name": name, "file": path, "short": short or Path(path).name, "line": line,
            "code": source_line(path, line)}


def threads_from_pyspy(text: str) -> list[dict[str, Any]]:
    """py-spy's ``dump --json`` as threads with their frames (innermost first)."""
    threads = []
    for thread in json.loads(text):
        frames = [_frame(f.get("name") or "?", f.get("filename") or "", int(f.get("line") or 0),
                         f.get("short_filename") or "") for f in thread.get("frames", [])]
        threads.append({"name": thread.get("thread_name") or "", "id": thread.get("os_thread_id"),
                        "main": thread.get("thread_name") == "MainThread", "active": thread.get("active"),
                        "frames": frames})
    return threads


def threads_from_faulthandler(text: str) -> list[dict[str, Any]]:
    """faulthandler's dump (``Thread 0x.. (most recent call first):`` then ``File "f", line N in name``)
    as threads; the main thread is the last one listed (the interpreter lists the oldest last)."""
    threads: list[dict[str, Any]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("Thread 0x", "Current thread 0x")):
            threads.append({"name": "", "id": line.split()[-4] if "Current" in line else line.split()[1],
                            "main": False, "active": None, "frames": []})
        elif line.startswith('File "') and threads:
            path, _, rest = line[len('File "'):].partition('", line ')
            number, _, name = rest.partition(" in ")
            try:
                threads[-1]["frames"].append(_frame(name.strip() or "?", path, int(number)))
            except ValueError:
                continue
    if threads:
        threads[-1]["main"] = True
    return threads


def denied(text: str) -> bool:
    return any(words in text for words in DENIED_WORDS)


def dump_with_pyspy(pyspy: str, pid: int, native: bool, nonblocking: bool, timeout_s: float) -> dict[str, Any]:
    """One rank's stacks through py-spy, with how long py-spy took (the rank is stopped inside that)."""
    argv = [pyspy, "dump", "--pid", str(pid), "--json"] + (["--native"] if native else []) + \
        (["--nonblocking"] if nonblocking else [])
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"py-spy took over {timeout_s:g}s", "took_s": round(time.monotonic() - started, 4)}
    except OSError as exc:
        return {"error": f"cannot run py-spy: {exc}"}
    took = round(time.monotonic() - started, 4)
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        err += proc.stdout.decode("utf-8", "replace")
        first = next((ln for ln in err.splitlines() if ln.strip() and not ln.startswith(" ")), err.strip())
        return {"error": "py-spy: " + first.strip()[:300], "denied": denied(err), "took_s": took}
    try:
        threads = threads_from_pyspy(proc.stdout.decode("utf-8", "replace"))
    except ValueError as exc:
        return {"error": f"py-spy printed no JSON: {exc}", "took_s": took}
    # Blocking: py-spy stops the rank only around its read, inside this call: the call's length bounds it.
    return {"method": "py-spy", "threads": threads, "took_s": took,
            "paused_at_most_s": 0.0 if nonblocking else took}


def dump_with_signal(path: str, pid: int, wait_s: float = SIGNAL_WAIT_S) -> dict[str, Any]:
    """Ask the rank's hook for its stacks (the signal) and read what it appends to ``path``."""
    started = time.monotonic()
    try:
        before = Path(path).stat().st_size
    except OSError as exc:
        return {"error": f"the rank's stack file {path} cannot be read: {exc.strerror or exc}"}
    try:
        os.kill(pid, HOOK_SIGNAL)
    except OSError as exc:
        return {"error": f"cannot signal the rank: {exc.strerror or exc}", "denied": True}
    size, stable_since = before, None
    deadline = started + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = Path(path).stat().st_size
        if now != size:
            size, stable_since = now, time.monotonic()
        elif size > before and stable_since is not None and time.monotonic() - stable_since > 0.1:
            break
    if size <= before:
        return {"error": f"the rank wrote no stacks within {wait_s:g}s of the signal",
                "took_s": round(time.monotonic() - started, 4)}
    with open(path, "rb") as f:
        f.seek(before)
        text = f.read(size - before).decode("utf-8", "replace")
    # The rank's own handler writes in C from inside the signal: no pause to speak of is measured here.
    return {"method": "signal", "threads": threads_from_faulthandler(text),
            "took_s": round(time.monotonic() - started, 4), "paused_at_most_s": None}


def stack_of(rank: dict[str, Any], pyspy: str | None, via: str, native: bool, nonblocking: bool,
             timeout_s: float) -> dict[str, Any]:
    """One rank's stacks the way asked (``auto``: py-spy, then the hook's signal where py-spy may not)."""
    if rank["state"] == "T":
        return {"error": "stopped (state T: SIGSTOP, a debugger, or a frozen node): its stack cannot be read",
                "stopped": True}
    tried: dict[str, Any] = {}
    if via in ("auto", "py-spy"):
        if pyspy:
            tried = dump_with_pyspy(pyspy, rank["pid"], native, nonblocking, timeout_s)
            if native and "error" in tried:  # native frames are best effort: their unwinding may fail alone
                python_only = dump_with_pyspy(pyspy, rank["pid"], False, nonblocking, timeout_s)
                if "error" not in python_only:
                    return dict(python_only, native_error=tried["error"])
            if "error" not in tried or via == "py-spy":
                return tried
        elif via == "py-spy":
            return {"error": "no py-spy on this node"}
    if hook_is_live(rank):
        got = dump_with_signal(rank["hook"], rank["pid"], min(SIGNAL_WAIT_S, timeout_s))
        if tried and "error" not in got:
            got["fallback_from"] = tried["error"]
        return got if "error" not in got or not tried else dict(tried, signal_error=got["error"])
    if tried:
        return tried
    return {"error": "no way to read it: no py-spy here and the rank carries no stack hook "
                     "(ranks started by clusterkit launch do)"}


def sample_with_pyspy(pyspy: str, pid: int, seconds: float, rate: int, timeout_s: float) -> dict[str, Any]:
    """``py-spy record`` of the rank for ``seconds`` (never stopping it, idle threads included): each
    thread's folded stacks (root first, ``name (file:line)`` frames joined by ``;``) with their counts."""
    handle, out = tempfile.mkstemp(prefix="ck-record-", suffix=".txt")
    os.close(handle)
    argv = [pyspy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
            "--format", "raw", "--idle", "--threads", "--nonblocking", "--output", out]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        err = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0:
            first = next((ln for ln in err.splitlines() if ln.startswith("Error") or denied(ln)), err.strip()[:200])
            return {"error": "py-spy record: " + first.strip()[:300], "denied": denied(err)}
        folded: dict[str, int] = {}
        with open(out, encoding="utf-8", errors="replace") as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if stack and count.isdigit():
                    folded[stack] = folded.get(stack, 0) + int(count)
        return {"folded": folded, "seconds": seconds, "rate": rate}
    except subprocess.TimeoutExpired:
        return {"error": f"py-spy record took over {timeout_s:g}s"}
    except OSError as exc:
        return {"error": f"cannot run py-spy: {exc}"}
    finally:
        Path(out).unlink(missing_ok=True)


def ptrace_scope() -> int | None:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def take(pyspy: str | None, via: str = "auto", native: bool = False, nonblocking: bool = False,
         timeout_s: float = 10.0, sample_s: float = 0.0, rate: int = 50,
         proc_root: str = "/proc") -> dict[str, Any]:
    """Every rank's stacks on this node, taken at once (one thread per rank); with ``sample_s``, each
    rank's py-spy record over that many seconds as well."""
    if pyspy and not os.access(pyspy, os.X_OK):
        pyspy = None
    ranks = find_ranks(proc_root)
    started = time.time()

    def one(rank: dict[str, Any]) -> None:
        rank.update(stack_of(rank, pyspy, via, native, nonblocking, timeout_s))
        if sample_s > 0 and pyspy and rank["state"] != "T" and rank.get("method") == "py-spy":
            rank["sample"] = sample_with_pyspy(pyspy, rank["pid"], sample_s, rate, sample_s + timeout_s)

    workers = [threading.Thread(target=one, args=(rank,), daemon=True) for rank in ranks]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + timeout_s + sample_s + SIGNAL_WAIT_S + 1
    for worker, rank in zip(workers, ranks):
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            rank.setdefault("error", f"no stack within {timeout_s:g}s")
    return {"node": socket.gethostname(), "taken_at": started, "pyspy": pyspy, "uid": os.getuid(),
            "ptrace_scope": ptrace_scope(), "ranks": ranks}
