"""One hop of a pipelined relay, run ON A NODE by its ``python3`` (stdlib only, Python 3.8+).

The head streams a file into the first node's hop; every hop writes what it receives to its own
disk while forwarding it, unchanged, to the next node's hop over ``ssh`` (the node-to-node SSH that
bootstrap sets up). So a chain of N nodes takes about one transfer's time, and every link carries
the file once. Each hop:

- resumes a partial copy (``PATH.partial``): bytes it already has are hashed from disk, not rewritten;
- computes the sha256 while writing and renames the copy into place only when it matches;
- keeps forwarding when its own disk is full or its copy is bad, so one node never starts the rest;
- reports on stdout, one ``@@ckrelay {json}`` line per event, and passes its successors' lines up;
- gives up on an upstream that sends nothing for ``stall_s`` (its partial copy stays for a resume);
- reports ``ready`` only once the hop after it has: the head sends its first byte when the whole
  chain is up, so no hop's SSH handshake waits behind a link queue already full of data.

The probe before a relay also opens each node's SSH connection to its successor, all nodes at once, as
an OpenSSH control master (``warm_up``); the hop's ``ssh`` then opens a session on it in one round trip
instead of a handshake per node, one after the other. Without a master it connects directly.

Started as ``python3 -I -S -c BOOT BLOB SPEC`` (see ``clusterkit.cluster.remote.transfer``): BLOB is this
file (zlib, base64) so a hop can start the next one the same way, SPEC the hop's JSON (base64).
Also answers ``"op": "probe"``: the state of a copy, as one JSON line; and ``"op": "unwarm"``: close a
round's master that no hop closed (the head asks after a round that did not end cleanly). A hop closes
its own link however it ends: its upstream gone (it reads on, without reporting, to its stream's end),
a signal, an error.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import select
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

MARKER = "@@ckrelay "
BOOT = ("import base64,sys,zlib;exec(compile(zlib.decompress(base64.b64decode(sys.argv[1])),"
        "'clusterkit-relay-hop','exec'))")
CHUNK = 1 << 20
CHECKSUM_MISMATCH = "checksum mismatch on "  #: how a copy that does not hash right is reported
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ from Python 3.10 on; Linux's value


def widen_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: a sixteenth of the wake-ups of sshd, this hop and ssh per byte."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, CHUNK)
PROGRESS_EVERY_S = 0.5
WRITEBACK_EVERY = 8 << 20
BATCH_WAIT_S = 0.01
SLOW_LINK_BYTES_S = 50e6  # 10 ms of it (500 KB) fits in the hop's 1 MiB pipe
SOCKET_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path) on Linux, with its NUL
# OpenSSH's own words about a control socket it could not use: the hop then connected directly, and
# these lines are not why a hop was lost.
MUX_NOISE = ("Control socket", "ControlSocket", "read from master failed", "mux_client", "muxclient")
_out_lock = threading.Lock()
_upstream = {"gone": False}  # whoever reads this hop's events (the head, the hop before) went away


def emit(event: dict[str, Any]) -> None:
    """Report ``event`` upstream; once nobody reads, drop it and go on (this hop still ends cleanly)."""
    write_upstream((MARKER + json.dumps(event, sort_keys=True) + "\n").encode("utf-8"))


def write_upstream(data: bytes) -> None:
    with _out_lock:
        if _upstream["gone"]:
            return
        try:
            os.write(1, data)
        except OSError:
            _upstream["gone"] = True


def remote_command(python: str, blob: str, spec: dict[str, Any]) -> str:
    """The shell command that starts a hop (or a probe) with ``spec`` on a node."""
    encoded = base64.b64encode(json.dumps(spec).encode("utf-8")).decode("ascii")
    return f"{python} -I -S -c {shlex.quote(BOOT)} {blob} {encoded}"


def human(n: float) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000.0
    return f"{n} B"


def free_bytes(path: str) -> int:
    """Free bytes for an unprivileged user at ``path`` or its nearest existing parent."""
    stats = os.statvfs(existing_parent(path))
    return stats.f_bavail * stats.f_frsize


def existing_parent(path: str) -> Path:
    """``path`` or its nearest parent that exists."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def control_directory() -> Path | None:
    """Where warmed masters keep their sockets: a directory only this user can enter, else None."""
    directory = Path(tempfile.gettempdir()) / f"clusterkit-relay-{os.getuid()}"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None  # somebody else's, or open to others: no sockets there
    return directory


def control_path(tag: str) -> str | None:
    """The ControlPath of this relay round's master (``tag`` is the round's own), or None where there is none.

    A path past the socket limit (108 bytes, less the 17 a master adds while it binds, a long TMPDIR) makes
    OpenSSH's client fail rather than connect directly: then no master at all.
    """
    directory = control_directory()
    if directory is None or not re.fullmatch(r"[0-9a-z]{1,16}", tag):
        return None
    path = f"{directory}/{tag}-%C"
    if len(path) - 2 + 40 + 17 >= SOCKET_PATH_MAX:  # %C becomes 40 hex digits
        return None
    return path


def mux_options(path: str) -> list[str]:
    return ["-o", "ControlPath=" + path, "-o", "ControlMaster=no"]


def warm_up(ssh: list[str], host: str, tag: str, persist_s: int) -> subprocess.Popen[bytes] | None:
    """Start a control master to ``host`` in the background (``ssh -f`` returns once it is logged in)."""
    path = control_path(tag)
    if path is None:
        return None
    argv = [*ssh, "-o", "ControlPath=" + path, "-o", "ControlMaster=yes", "-o",
            f"ControlPersist={persist_s}", "-f", "-N", host]
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except OSError:
        return None


def close_master(ssh: list[str], host: str, tag: str) -> None:
    """Ask this round's master to ``host`` to exit (it serves nobody else: the path is the round's own)."""
    path = control_path(tag)
    if path is None:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run([*ssh, *mux_options(path), "-O", "exit", host], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=5, check=False)


def has_master(ssh: list[str], host: str, tag: str) -> bool:
    """Whether this round's master to ``host`` is up here, asked of the master itself (``ssh -O check``):
    a socket in the directory is not enough where /tmp is shared by nodes, each with masters of its own."""
    path = control_path(tag)
    if path is None:
        return False
    try:
        done = subprocess.run([*ssh, *mux_options(path), "-O", "check", host], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _load_sync_file_range() -> Any:
    """libc's sync_file_range (Linux), or None: starts writing a range to disk without waiting for it."""
    try:
        import ctypes  # here: a python built without libffi still relays

        function = ctypes.CDLL(None, use_errno=True).sync_file_range
        function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
        return function
    except (ImportError, OSError, AttributeError):
        return None


SYNC_FILE_RANGE_WRITE = 2


def hash_file(path: str, limit: int | None = None) -> Any:
    digest = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as f:
        while remaining is None or remaining > 0:
            block = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not block:
                break
            digest.update(block)
            if remaining is not None:
                remaining -= len(block)
    return digest


# ------------------------------------------------------------------------------------------ probe

def probe(spec: dict[str, Any]) -> None:
    """Print the state of the copy; where this node will relay, first warm its link to ``spec["warm"]``."""
    path, size = spec["path"], spec["size"]
    state: dict[str, Any] = {"state": "missing", "bytes": 0, "free": None, "writable": False, "error": None,
                             "warmed": False}
    final, partial = Path(path), Path(path + ".partial")
    warming = None
    with contextlib.suppress(OSError):  # start it now: it logs in while the copy is hashed
        if spec.get("warm") and not (final.is_file() and final.stat().st_size == size):
            warming = warm_up(spec["ssh"], spec["warm"], spec["tag"], int(spec.get("persist_s", 120)))
    try:
        state["free"] = free_bytes(str(final.parent))
        state["writable"] = os.access(existing_parent(str(final.parent)), os.W_OK)
        if final.is_file():
            have = final.stat().st_size
            state["bytes"] = have
            if have != size:
                state["state"] = "wrong"
                state["error"] = f"holds {human(have)}, the file has {human(size)}"
            elif spec.get("rehash") and hash_file(path).hexdigest() != spec["sha256"]:
                state["state"] = "wrong"
                state["error"] = "its sha256 does not match"
            else:
                state["state"] = "complete"
        elif partial.is_file():
            state["state"] = "partial"
            state["bytes"] = min(partial.stat().st_size, size)
    except OSError as exc:
        state["error"] = f"{exc.filename or path}: {exc.strerror}"
    if warming is not None:
        needed = size - (state["bytes"] if state["state"] == "partial" else 0)
        relays = state["state"] != "complete" and state["writable"] and (state["free"] or 0) >= needed
        try:  # a master not up by then is not waited for: the hop connects directly instead
            warming.wait(timeout=float(spec.get("warm_timeout_s", 10)) if relays else 0)
        except subprocess.TimeoutExpired:
            warming.kill()
        if not relays and warming.returncode == 0:  # this node takes no part: its master is not needed
            close_master(spec["ssh"], spec["warm"], spec["tag"])
        state["warmed"] = relays and warming.returncode == 0
    print(json.dumps(state))


def unwarm(spec: dict[str, Any]) -> None:
    """Close this round's master to ``spec["warm"]`` if it is still up (a round that did not end cleanly)."""
    close_master(list(spec["ssh"]), spec["warm"], str(spec["tag"]))
    print(json.dumps({"closed": True}))


# -------------------------------------------------------------------------------------------- hop

class Downstream:
    """The next hop: an ssh child fed through its stdin; its events are passed up as they come."""

    def __init__(self, spec: dict[str, Any], blob: str) -> None:
        self.label = spec["next"][0]
        child = dict(spec, label=self.label, next=spec["next"][1:])
        self.ssh = list(spec["ssh"])
        self.tag = str(spec.get("mux") or "")
        self.control = control_path(self.tag) if self.tag else None
        self.warm = self.control is not None and has_master(self.ssh, self.label, self.tag)
        mux = mux_options(self.control) if self.warm and self.control else []
        argv = [*self.ssh, *mux, self.label, remote_command(spec.get("python", "python3"), blob, child)]
        self.finals: set[str] = set()
        self.ready = threading.Event()
        self.stderr_tail: list[str] = []
        self.last_event = time.monotonic()
        self.alive = True
        self._released = False
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0)
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        widen_pipe(self.proc.stdin.fileno())
        self.stdin, self.stdout, self.stderr = self.proc.stdin, self.proc.stdout, self.proc.stderr
        self._threads = [threading.Thread(target=self._pump_events, daemon=True),
                         threading.Thread(target=self._pump_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _pump_events(self) -> None:
        for raw in iter(self.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            if line.startswith(MARKER):
                self.last_event = time.monotonic()
                try:
                    event = json.loads(line[len(MARKER):])
                except ValueError:
                    continue
                if event.get("ev") in ("done", "failed"):
                    self.finals.add(event.get("host"))
                write_upstream(raw if raw.endswith(b"\n") else raw + b"\n")
                if event.get("ev") == "ready" and event.get("host") == self.label:
                    self.ready.set()  # after passing it up: the head sees the chain ready from its end back
        self.ready.set()  # it ended before it was ready: waiting longer is pointless

    def _pump_stderr(self) -> None:
        for raw in iter(self.stderr.readline, b""):
            text = raw.decode("utf-8", "replace").strip()
            if text and not text.startswith(MUX_NOISE):
                self.stderr_tail = [*self.stderr_tail, text][-4:]

    def send(self, data: bytes, position: int) -> None:
        if not self.alive:
            return
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.stdin.fileno(), view)
                view = view[written:]
        except OSError as exc:
            self.lost(position, exc.strerror or str(exc))

    def lost(self, position: int, why: str) -> None:
        if not self.alive:
            return
        self.alive = False
        with contextlib.suppress(OSError):
            self.stdin.close()
        # Give ssh a moment to exit and say why (connection refused, host key, no python3...).
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=3)
        self._threads[1].join(timeout=2)  # ssh's last words may still be in the pipe
        detail = " | ".join(self.stderr_tail[-2:]) or why
        emit({"ev": "lost", "host": self.label, "pos": position, "error": detail})

    def release_link(self) -> None:
        """Ask this round's master to the next hop to exit now, not after its persist time (once; it serves
        nobody else). Also where the hop found none up: the probe may have warmed it after all."""
        if self.tag and not self._released:
            self._released = True
            close_master(self.ssh, self.label, self.tag)

    def abandon(self) -> None:
        """This hop ends early (its upstream gone, a signal, an error): the next hop's ssh and the link go too."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)
            if self.proc.poll() is None:
                self.proc.kill()
        self.release_link()

    def end_stream(self) -> None:
        """Tell the next hop the stream is over (its own copy is then finished while this one is)."""
        with contextlib.suppress(OSError):
            self.stdin.close()

    def finish(self, stall_s: float) -> None:
        """Close the stream and wait while the successors still report; then report the next hop's end."""
        self.end_stream()
        while self.proc.poll() is None:
            if time.monotonic() - self.last_event > stall_s:
                self.proc.kill()
                break
            time.sleep(0.1)
        self.proc.wait()
        for thread in self._threads:
            thread.join(timeout=2)
        self.release_link()
        if self.label not in self.finals and self.alive:
            detail = " | ".join(self.stderr_tail[-2:]) or f"exit status {self.proc.returncode}"
            emit({"ev": "lost", "host": self.label, "pos": None, "error": detail})


class Copy:
    """This node's copy: PATH.partial, locked, resumed, hashed as it grows, renamed when it is right."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.label = spec["label"]
        self.path = spec["path"]
        self.partial = self.path + ".partial"
        self.size = spec["size"]
        self.sha256 = spec["sha256"]
        self.digest = hashlib.sha256()
        self.have = 0
        self.file: IO[bytes] | None = None
        self.lock: IO[str] | None = None
        self.error: str | None = None
        self.written_back = 0
        self._sync_file_range = _load_sync_file_range()

    def open(self, offset: int) -> bool:
        """Prepare to receive the stream from ``offset``; False (with self.error) when this node cannot."""
        try:
            directory = str(Path(self.path).parent)
            Path(directory).mkdir(parents=True, exist_ok=True)
            self._lock()
            if Path(self.partial).is_file():
                self.have = min(Path(self.partial).stat().st_size, self.size)
            if self.have < offset:
                self.have = 0  # a gap: start over (the head streams from the smallest offset)
                if offset:
                    self.error = "its partial copy is shorter than where the stream starts; rerun to resend"
                    return False
            needed = self.size - self.have
            free = free_bytes(directory)
            if free < needed:
                self.error = (f"no space left on {self.label}: {directory} has {human(free)} free, "
                              f"the copy needs {human(needed)} more ({human(self.size)} in all)")
                return False
            if self.have:
                self.digest = hash_file(self.partial, self.have)
            self.file = open(self.partial, "ab" if self.have else "wb")  # noqa: SIM115 (held across calls)
            self.file.truncate(self.have)
            return True
        except OSError as exc:
            self.error = f"{exc.filename or self.path} on {self.label}: {exc.strerror}"
            return False

    def _lock(self) -> None:
        self.lock = open(self.partial + ".lock", "a+")  # noqa: SIM115 (held until the process ends)
        for _ in range(50):
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                _end_stale_hop(self.lock)
                time.sleep(0.1)
        else:
            raise OSError(errno.EBUSY, "another transfer holds this copy", self.partial)
        self.lock.seek(0)
        self.lock.truncate()
        self.lock.write(f"{os.getpid()} {socket.gethostname()}")
        self.lock.flush()

    def write(self, data: bytes, position: int) -> None:
        """Append the part of ``data`` (stream bytes from ``position``) this copy lacks."""
        if self.file is None:
            return
        skip = max(0, self.have - position)
        if skip >= len(data):
            return
        part = memoryview(data)[skip:]
        try:
            self.file.write(part)
        except OSError as exc:
            self.abandon(exc)
            return
        self.digest.update(part)
        self.have += len(part)
        if self._sync_file_range is not None and self.have - self.written_back >= WRITEBACK_EVERY:
            # Start writing what came so far: the fsync at the end then finds little left to do,
            # instead of every node's whole copy at once.
            self._sync_file_range(self.file.fileno(), self.written_back, self.have - self.written_back,
                                  SYNC_FILE_RANGE_WRITE)
            self.written_back = self.have

    def abandon(self, exc: OSError) -> None:
        directory = str(Path(self.path).parent)
        if exc.errno == errno.ENOSPC:
            self.error = (f"no space left on {self.label}: {directory} filled up at {human(self.have)} of "
                          f"{human(self.size)} ({human(free_bytes(directory))} free)")
        else:
            self.error = f"writing {self.partial} on {self.label} failed: {exc.strerror}"
        self._close()
        _unlink(self.partial)

    def finish(self) -> bool:
        """True when the copy is complete and right (then it is in place); else self.error says why."""
        if self.file is None:
            return False
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as exc:
            self.abandon(exc)
            return False
        self._close()
        if self.have < self.size:
            self.error = (f"the stream ended at {human(self.have)} of {human(self.size)} (upstream lost); "
                          "partial copy kept for a resume")
            return False
        if self.digest.hexdigest() != self.sha256:
            self.error = (f"{CHECKSUM_MISMATCH}{self.label}: got sha256 {self.digest.hexdigest()[:16]}..., "
                          f"expected {self.sha256[:16]}...; the bad copy was deleted")
            _unlink(self.partial)
            return False
        Path(self.partial).replace(self.path)
        _unlink(self.partial + ".lock")
        return True

    def _close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).unlink()


def _end_stale_hop(lock_file: IO[str]) -> None:
    """A hop left over from a broken relay still holds the copy: end it if it is one of ours, on this node
    (where nodes share the directory, a pid written by another node names nothing here)."""
    try:
        lock_file.seek(0)
        pid_text, _, host = lock_file.read().strip().partition(" ")
        pid = int(pid_text or 0)
        if host and host != socket.gethostname():
            return
        ours = pid and pid != os.getpid() and b"clusterkit-relay-hop" in Path(f"/proc/{pid}/cmdline").read_bytes()
        if ours:
            os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def hop(spec: dict[str, Any], blob: str) -> None:
    """Receive, keep and forward the stream; whatever ends it, the link the probe warmed is closed after."""
    downstream = None
    try:
        downstream = Downstream(spec, blob) if spec.get("next") else None
        _receive(spec, downstream)
    finally:
        if downstream is not None:
            downstream.abandon()  # already finished, normally: then this only makes sure of the link
        elif spec.get("next") and spec.get("mux"):  # the next hop's ssh never started
            close_master(list(spec["ssh"]), spec["next"][0], str(spec["mux"]))


def _receive(spec: dict[str, Any], downstream: Downstream | None) -> None:
    started = time.monotonic()
    offset = int(spec.get("offset", 0))
    stall_s = float(spec.get("stall_s", 60))
    widen_pipe(0)
    copy = Copy(spec)
    writing = copy.open(offset)
    started_event = {"ev": "start", "host": copy.label, "have": copy.have, "pos": offset}
    if downstream is not None:
        started_event["warm_link"] = downstream.warm  # its link to the next hop was opened by the probe
    emit(started_event)
    if not writing:
        emit({"ev": "failed", "host": copy.label, "error": copy.error})
    if downstream is not None:
        downstream.ready.wait(stall_s)
    emit({"ev": "ready", "host": copy.label})
    position = offset
    last_report, marked = 0.0, (time.monotonic(), offset)  # marked: (when, position) of the last rate reading
    slow_link = False
    stalled = False
    while True:
        ready, _, _ = select.select([0], [], [], stall_s)
        if not ready:
            stalled = True
            break
        data = os.read(0, CHUNK)
        if not data:
            break
        if slow_link and len(data) < CHUNK // 4:
            # The link is slower than this hop: let more arrive before the next read. Fewer, larger
            # reads and writes wake this hop and the ssh after it a tenth as often (on a node the
            # relay shares with training jobs, and on one machine running many nodes). Only on a
            # slow link: a fast one would fill the pipe and the SSH window while this hop sleeps.
            time.sleep(BATCH_WAIT_S)
        if downstream is not None:
            downstream.send(data, position)
        if writing:
            copy.write(data, position)
            if copy.error:
                writing = False
                emit({"ev": "failed", "host": copy.label, "error": copy.error})
        position += len(data)
        now = time.monotonic()
        if now - last_report >= PROGRESS_EVERY_S:
            slow_link = (position - marked[1]) / max(now - marked[0], 1e-3) < SLOW_LINK_BYTES_S
            last_report, marked = now, (now, position)
            emit({"ev": "progress", "host": copy.label, "pos": position})
    if downstream is not None:
        downstream.end_stream()  # before this copy's fsync: the chain's end must not wait for every disk in turn
    if writing:
        if stalled:
            copy.error = (f"no data from upstream for {stall_s:.0f}s at {human(position)} of "
                          f"{human(copy.size)}; partial copy kept for a resume")
            copy._close()
            emit({"ev": "failed", "host": copy.label, "error": copy.error, "pos": position})
        elif copy.finish():
            emit({"ev": "done", "host": copy.label, "pos": position,
                  "seconds": round(time.monotonic() - started, 3)})
        else:
            emit({"ev": "failed", "host": copy.label, "error": copy.error, "pos": position})
    if downstream is not None:
        downstream.finish(stall_s)


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # through hop()'s cleanup: the warmed link is closed


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    blob = sys.argv[1]
    spec = json.loads(base64.b64decode(sys.argv[2]).decode("utf-8"))
    if spec.get("op") == "probe":
        probe(spec)
    elif spec.get("op") == "unwarm":
        unwarm(spec)
    else:
        hop(spec, blob)


if __name__ == "__main__":
    main()
