"""The monitor's node-side sampler: one compact JSON sample per interval on stdout.

Runs inside the agent (``agent stream``) for as long as the head's SSH channel stays open: it ends when
its stdout breaks or its stdin (the channel's other half) reaches end of file, even in the middle of a
long interval, so no sampler outlives the head that started it. Each line is
``SAMPLE_MARKER`` + a JSON object (the wire format, read by ``clusterkit.monitor.model``)::

    {"v": 1, "seq": 17, "boot": "4711-1712345678.1", "t": 1712345678.12, "dt": 1.0,
     "cpu": 12.5, "ncpu": 16, "mem": [total, available], "net": [rx_bytes_s, tx_bytes_s],
     "gpus": [{"i": 0, "uuid": "GPU-..", "name": "..", "util": 93, "mutil": 40, "mem": [total, used],
               "temp": 71, "power": 612.3, "plimit": 700.0, "sm": 1980, "smmax": 1980,
               "reasons": ["sw_power_cap"], "ecc": [corrected, uncorrected], "pcie": [tx_kb_s, rx_kb_s],
               "energy": joules, "na": {"field": "why it could not be read"}}],
     "gpu_na": "why no GPU could be read" | null,
     "xid": [[bus_id, code, message]], "xid_na": "why kernel events cannot be read" | null,
     "ranks": [{"pid": 1234, "rank": 0, "local": 0, "world": 3, "job": "10.0.0.1:29500",
                "cmd": "python -u train.py", "state": "R", "cpu": 98.0, "rss": bytes,
                "gpu": 0 | null, "gmem": bytes | null}]}

- NVML is initialised once. Each interval's NVML reads run under one deadline
  (``collect.deadline.call_with_deadline``) that names the call it was stuck in; after a hang no
  call is made until the stuck one returns, and every sample says so (``gpu_na``).
- A call that fails (``NotSupported``) is noted once and not made again; its field goes to ``na``.
- Slow queries (PCIe throughput blocks ~20 ms per GPU and direction, energy) are off by default
  (``slow_every=0``), else read every ``slow_every``-th sample; ECC counters every 5th.
- Ranks are processes whose environment (``/proc/PID/environ``, read once per process) holds
  ``RANK`` and ``LOCAL_RANK``, as DeepSpeed's launcher, torchrun and accelerate set them; a child
  with its parent's rank (a dataloader worker) is not a rank of its own.

With ``CLUSTERKIT_NVML_REPLAY`` set, GPUs come from the recorded readings (see ``nvml_replay``).
Stdlib only (pynvml optional), Python 3.8 syntax: ships inside the agent.
"""

from __future__ import annotations

import errno
import json
import math
import os
import select
import stat
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable

from clusterkit.node.collect.deadline import call_with_deadline
from clusterkit.node.collect.nvml import NVML_NOT_FOUND, NvmlApi, PynvmlApi, decode_clock_event_reasons, nvml_error_text
from clusterkit.node.collect.nvml_replay import REPLAY_ENV, ReplayNvml
from clusterkit.node.collect.xid import parse_xid_events
from clusterkit.node.facts import Unavailable

#: Version of the sample format; the head refuses samples of a version it does not know.
SAMPLE_PROTOCOL = 1
#: Prefix of every sample line, so a login shell that prints banners cannot break the stream.
SAMPLE_MARKER = "@@ck-sample@@ "
#: The sampling intervals a node accepts, in seconds (the head checks the same bounds first).
MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 60.0
#: ECC counters change rarely and matter when they do: read every this many samples.
ECC_EVERY = 5
#: The environment keys that make a process a training rank.
RANK_KEYS = (b"RANK", b"LOCAL_RANK")
#: Processes found not to be ranks are looked at again every this many samples.
RECHECK_EVERY = 10
#: A rank's command line is cut to this many characters.
CMD_CHARS = 60


class GpuSampler:
    """Reads every GPU each interval under one deadline; remembers what the driver does not support."""

    def __init__(self, api: NvmlApi, timeout_s: float = 2.0, slow_every: int = 0) -> None:
        self.api = api
        self.timeout_s = timeout_s
        self.slow_every = slow_every
        self.unsupported: dict[str, str] = {}  # "field:index" -> reason, never asked again
        self.static: dict[int, dict[str, Any]] = {}  # per GPU: name, uuid, max clock
        self.count = 0
        self.error: str | None = None  # why no GPU can be read (NVML missing, hung)
        self._current = ""  # the call in flight, named when it hangs
        self._stuck: threading.Event | None = None  # set when the hung pass finally returns
        started = call_with_deadline(self._start, timeout_s, "nvmlInit")
        if isinstance(started, Unavailable):
            reason = started.reason
            self.error = reason[reason.find(NVML_NOT_FOUND):] if NVML_NOT_FOUND in reason else reason

    def _start(self) -> None:
        self.api.init()
        self.count = int(self.api.device_count())

    def read(self, seq: int) -> tuple[list[dict[str, Any]], str | None]:
        """Every GPU's sample, or ``([], reason)`` when NVML is missing or hung."""
        if self.count == 0 and self.error is None:
            return [], None
        if self._stuck is not None:
            if not self._stuck.is_set():
                return [], self.error
            self._stuck, self.error = None, None  # the hung call came back: read again
        elif self.error is not None:
            return [], self.error
        done = threading.Event()
        box: dict[str, Any] = {"gpus": []}

        def one_pass() -> None:
            try:
                for index in range(self.count):
                    box["gpus"].append(self._read_gpu(index, seq))
            finally:
                done.set()

        outcome = call_with_deadline(one_pass, self.timeout_s, "nvml-sample")
        if isinstance(outcome, Unavailable):
            self._stuck = done
            self.error = (f"NVML stopped answering: {self._current} did not return within "
                          f"{self.timeout_s:g}s (hung driver or GPU?)")
            return list(box["gpus"]), self.error
        return list(box["gpus"]), None

    def _call(self, index: int, field: str, what: str, func: Callable[[], Any], na: dict[str, str]) -> Any:
        key = f"{field}:{index}"
        if key in self.unsupported:
            na[field] = self.unsupported[key]
            return None
        self._current = what
        try:
            return func()
        except Exception as exc:
            reason = nvml_error_text(exc)
            if "NotSupported" in reason or "not in the recorded readings" in reason:
                self.unsupported[key] = reason
            na[field] = reason
            return None

    def _read_gpu(self, i: int, seq: int) -> dict[str, Any]:
        api = self.api
        na: dict[str, str] = {}
        call = self._call
        if i not in self.static:
            self.static[i] = {
                "name": call(i, "name", f"nvmlDeviceGetName({i})", lambda: api.name(i), na),
                "uuid": call(i, "uuid", f"nvmlDeviceGetUUID({i})", lambda: api.uuid(i), na),
                "smmax": call(i, "smmax", f"nvmlDeviceGetMaxClockInfo({i}, SM)",
                              lambda: api.max_clock_mhz(i, "sm"), na),
            }
        gpu: dict[str, Any] = {"i": i, **self.static[i]}
        util = call(i, "util", f"nvmlDeviceGetUtilizationRates({i})", lambda: api.utilization(i), na)
        gpu["util"], gpu["mutil"] = (util[0], util[1]) if util else (None, None)
        memory = call(i, "mem", f"nvmlDeviceGetMemoryInfo({i})", lambda: api.memory_info(i), na)
        gpu["mem"] = [memory[0], memory[1]] if memory else None
        gpu["temp"] = call(i, "temp", f"nvmlDeviceGetTemperature({i})", lambda: api.temperature_c(i), na)
        power = call(i, "power", f"nvmlDeviceGetPowerUsage({i})", lambda: api.power_usage_mw(i), na)
        gpu["power"] = None if power is None else round(power / 1000.0, 1)
        limit = call(i, "plimit", f"nvmlDeviceGetEnforcedPowerLimit({i})",
                     lambda: api.enforced_power_limit_mw(i), na)
        gpu["plimit"] = None if limit is None else round(limit / 1000.0, 1)
        gpu["sm"] = call(i, "sm", f"nvmlDeviceGetClockInfo({i}, SM)", lambda: api.clock_mhz(i, "sm"), na)
        mask = call(i, "reasons", f"nvmlDeviceGetCurrentClocksEventReasons({i})",
                    lambda: api.clock_event_reasons(i), na)
        gpu["reasons"] = None if mask is None else decode_clock_event_reasons(int(mask))
        procs = call(i, "procs", f"nvmlDeviceGetComputeRunningProcesses({i})",
                     lambda: api.compute_processes(i), na)
        gpu["procs"] = [[pid, used] for pid, used in procs] if procs is not None else None
        if seq % ECC_EVERY == 0:
            corrected = call(i, "ecc", f"nvmlDeviceGetTotalEccErrors({i}, CORRECTED, VOLATILE)",
                             lambda: api.total_ecc_errors(i, False, False), na)
            uncorrected = call(i, "ecc", f"nvmlDeviceGetTotalEccErrors({i}, UNCORRECTED, VOLATILE)",
                               lambda: api.total_ecc_errors(i, True, False), na)
            if corrected is not None and uncorrected is not None:
                gpu["ecc"] = [corrected, uncorrected]
        if self.slow_every and seq % self.slow_every == 0:
            pcie = call(i, "pcie", f"nvmlDeviceGetPcieThroughput({i})", lambda: api.pcie_throughput_kbs(i), na)
            if pcie is not None:
                gpu["pcie"] = [pcie[0], pcie[1]]
            energy = call(i, "energy", f"nvmlDeviceGetTotalEnergyConsumption({i})",
                          lambda: api.total_energy_mj(i), na)
            if energy is not None:
                gpu["energy"] = round(energy / 1000.0, 1)
        if na:
            gpu["na"] = na
        return gpu


# ------------------------------------------------------------------------------------------- /proc


class ProcReader:
    """CPU, memory, network and training ranks from ``/proc`` (``proc_root`` for recordings)."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.root = proc_root
        self.ticks_per_s = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self.page_size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._cpu_last: tuple[int, int] | None = None
        self._net_last: tuple[float, int, int] | None = None
        #: pid -> rank info read once from its environment, or None: not a rank (looked at again every
        #: RECHECK_EVERY calls, in case it was caught between fork and exec).
        self._identity: dict[int, dict[str, Any] | None] = {}
        self._calls = 0
        self._proc_cpu_last: dict[int, tuple[float, int]] = {}

    def _read(self, relative: str) -> str:
        # Plain string paths: this runs for every rank every second, where pathlib's cost shows.
        with open(f"{self.root}/{relative}", encoding="utf-8", errors="replace") as f:
            return f.read()

    def cpu_percent(self) -> tuple[float | None, int]:
        """Busy share of all CPUs since the last call (None on the first), and the CPU count."""
        text = self._read("stat")
        ncpu = 0
        busy = total = 0
        for line in text.splitlines():
            if line.startswith("cpu "):
                values = [int(v) for v in line.split()[1:]]
                total = sum(values[:8])  # guest time is already counted in user
                busy = total - values[3] - (values[4] if len(values) > 4 else 0)  # idle, iowait
            elif line.startswith("cpu"):
                ncpu += 1
        last, self._cpu_last = self._cpu_last, (busy, total)
        if last is None or total <= last[1]:
            return None, ncpu
        return round(100.0 * (busy - last[0]) / (total - last[1]), 1), ncpu

    def memory(self) -> list[int] | None:
        values = {}
        for line in self._read("meminfo").splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                values[key] = int(rest.split()[0]) * 1024
        if "MemTotal" not in values:
            return None
        return [values["MemTotal"], values.get("MemAvailable", 0)]

    def net_rate(self, now: float) -> list[float] | None:
        """Bytes/s received and sent over every interface but loopback since the last call."""
        rx = tx = 0
        for line in self._read("net/dev").splitlines()[2:]:
            name, _, counters = line.partition(":")
            fields = counters.split()
            if name.strip() == "lo" or len(fields) < 9:
                continue
            rx += int(fields[0])
            tx += int(fields[8])
        last, self._net_last = self._net_last, (now, rx, tx)
        if last is None or now <= last[0]:
            return None
        seconds = now - last[0]
        return [round(max(0, rx - last[1]) / seconds), round(max(0, tx - last[2]) / seconds)]

    def _stat(self, pid: int) -> list[str] | None:
        try:
            text = self._read(f"{pid}/stat")
        except OSError:
            return None
        # The command name (field 2) is in parentheses and may hold spaces or ')'.
        return text[text.rfind(")") + 2:].split()

    def _identify(self, pid: int) -> dict[str, Any] | None:
        info: dict[str, Any] | None = None
        try:
            with open(f"{self.root}/{pid}/environ", "rb") as f:
                environ = f.read()
            env = dict(item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
            if all(k in env for k in RANK_KEYS):
                with open(f"{self.root}/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
                argv = [a.decode("utf-8", "replace") for a in cmdline.split(b"\0") if a]
                info = {"rank": int(env[b"RANK"]), "local": int(env[b"LOCAL_RANK"]),
                        "world": _env_int(env, b"WORLD_SIZE"),
                        "job": "{}:{}".format(env.get(b"MASTER_ADDR", b"?").decode("utf-8", "replace"),
                                              env.get(b"MASTER_PORT", b"?").decode("utf-8", "replace")),
                        "cmd": " ".join(Path(a).name if n == 0 else a
                                        for n, a in enumerate(argv[:3]))[:CMD_CHARS]}
        except (OSError, ValueError):
            info = None  # not ours to read, gone, or a malformed rank: not a rank we can show
        self._identity[pid] = info
        return info

    def ranks(self, now: float) -> list[dict[str, Any]]:
        """Every training rank on this node with its state, CPU share since the last call and RSS."""
        try:
            with os.scandir(self.root) as entries:
                pids = [int(entry.name) for entry in entries if entry.name.isdigit()]
        except OSError:
            return []
        self._calls += 1
        if self._calls % RECHECK_EVERY == 0:
            self._identity = {pid: info for pid, info in self._identity.items() if info is not None}
        found: dict[int, tuple[dict[str, Any], list[str]]] = {}
        for pid in pids:
            # Only ranks (and processes not seen before) cost a read: most of /proc is skipped.
            info = self._identity[pid] if pid in self._identity else self._identify(pid)
            if info is None:
                continue
            fields = self._stat(pid)
            if fields is not None and len(fields) >= 22:
                found[pid] = (info, fields)
        alive = set(pids)
        self._identity = {pid: info for pid, info in self._identity.items() if pid in alive}
        ranks = []
        for pid, (info, fields) in sorted(found.items()):
            parent = found.get(int(fields[1]))
            if parent is not None and parent[0]["rank"] == info["rank"]:
                continue  # a worker forked by the rank inherits its environment
            ticks = int(fields[11]) + int(fields[12])
            last = self._proc_cpu_last.get(pid)
            cpu = None
            if last is not None and now > last[0]:
                cpu = round(100.0 * (ticks - last[1]) / self.ticks_per_s / (now - last[0]), 1)
            self._proc_cpu_last[pid] = (now, ticks)
            ranks.append(dict(info, pid=pid, state=fields[0], cpu=cpu, rss=int(fields[21]) * self.page_size))
        self._proc_cpu_last = {pid: v for pid, v in self._proc_cpu_last.items() if pid in found}
        return ranks


def _env_int(env: dict[bytes, bytes], key: bytes) -> int | None:
    try:
        return int(env[key])
    except (KeyError, ValueError):
        return None


# -------------------------------------------------------------------------------------- kernel log


class KmsgTail:
    """New XID events from ``/dev/kmsg``, read without blocking from where sampling started."""

    def __init__(self, path: str = "/dev/kmsg") -> None:
        self.error: str | None = None
        self._fd: int | None = None
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as exc:
            self.error = f"cannot read {path}: {exc.strerror} (new XID events are not shown)"

    def new_events(self) -> list[list[Any]]:
        if self._fd is None:
            return []
        lines = []
        while True:
            try:
                record = os.read(self._fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten before we read it: go on with the next
                    continue
                break  # EAGAIN: nothing more for now
            if not record:
                break
            lines.append(record.decode("utf-8", "replace").split(";", 1)[-1])
        return [[e.bus_id, e.code, e.message] for e in parse_xid_events("\n".join(lines))]


# ----------------------------------------------------------------------------------------- sampler


class Sampler:
    """Builds one sample per call to :meth:`sample`; :meth:`run` prints one per interval."""

    def __init__(self, gpus: GpuSampler, proc: ProcReader, kmsg: KmsgTail | None,
                 interval_s: float, clock: Callable[[], float] = time.time) -> None:
        self.gpus = gpus
        self.proc = proc
        self.kmsg = kmsg
        self.interval_s = interval_s
        self.clock = clock
        self.seq = 0
        self.boot = f"{os.getpid()}-{clock():.1f}"
        self._last_t: float | None = None

    def sample(self) -> dict[str, Any]:
        now = self.clock()
        gpus, gpu_na = self.gpus.read(self.seq)
        cpu, ncpu = _guarded(self.proc.cpu_percent, (None, 0))
        ranks = _guarded(lambda: self.proc.ranks(now), [])
        by_pid = {pid: (gpu["i"], used) for gpu in gpus for pid, used in (gpu.pop("procs", None) or [])}
        for rank in ranks:
            rank["gpu"], rank["gmem"] = by_pid.get(rank["pid"], (None, None))
        t = self.clock()
        sample = {
            "v": SAMPLE_PROTOCOL, "seq": self.seq, "boot": self.boot, "t": round(t, 3),
            "dt": None if self._last_t is None else round(t - self._last_t, 3),
            "cpu": cpu, "ncpu": ncpu, "mem": _guarded(self.proc.memory, None),
            "net": _guarded(lambda: self.proc.net_rate(now), None),
            "gpus": gpus, "gpu_na": gpu_na,
            "xid": self.kmsg.new_events() if self.kmsg else [],
            "xid_na": self.kmsg.error if self.kmsg else "replay: no kernel log",
            "ranks": ranks,
        }
        self.seq += 1
        self._last_t = t
        return sample

    def run(self, out: IO[str], count: int = 0, wait: Callable[[float], bool] | None = None) -> None:
        """Print a sample every interval (``count`` of them, 0 = until the reader goes away).

        ``wait(seconds)`` sleeps between samples and returns False when the channel has closed
        (``ChannelWatch.wait``); the default only sleeps.
        """
        pause = wait or _sleep
        started = time.monotonic()
        while count == 0 or self.seq < count:
            line = SAMPLE_MARKER + json.dumps(self.sample(), separators=(",", ":")) + "\n"
            try:
                out.write(line)
                out.flush()
            except (BrokenPipeError, OSError):
                return  # the head closed the channel
            if count and self.seq >= count:
                return
            # Keep to the grid (start + k * interval) so sampling does not drift; skip missed slots.
            ticks = int((time.monotonic() - started) / self.interval_s) + 1
            if not pause(max(0.0, started + ticks * self.interval_s - time.monotonic())):
                return  # the head closed the channel while we waited


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return True


class ChannelWatch:
    """Waits between samples while watching the channel's input for its end.

    Over SSH, stdin is the session's pipe (or socket) from sshd, which sshd closes when the head's
    session ends (the head stopped, was killed, or its connection dropped). Only a pipe or socket is
    watched: a terminal or /dev/null is no channel and says nothing about the head.
    """

    def __init__(self, fd: int = 0) -> None:
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            mode = 0
        self.fd: int | None = fd if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else None

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; False as soon as the channel's input reaches end of file."""
        if self.fd is None:
            return _sleep(seconds)
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    return False
                if not data:
                    return False  # end of file: the other end is gone


def valid_interval(seconds: float) -> bool:
    """A finite interval within ``MIN_INTERVAL_S``..``MAX_INTERVAL_S``."""
    return math.isfinite(seconds) and MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S


def _guarded(func: Callable[[], Any], fallback: Any) -> Any:
    try:
        return func()
    except (OSError, ValueError, IndexError):
        return fallback


def nvml_for_environment() -> NvmlApi:
    """The recording named by ``CLUSTERKIT_NVML_REPLAY``, else the real NVML."""
    replay = os.environ.get(REPLAY_ENV, "").strip()
    return ReplayNvml(replay) if replay else PynvmlApi()


def stream(interval_s: float, count: int = 0, slow_every: int = 0, nvml_timeout_s: float = 2.0,
           out: IO[str] | None = None) -> None:
    """``agent stream``: sample this node every ``interval_s`` until the channel (stdin or stdout) closes."""
    if not valid_interval(interval_s):
        raise ValueError(f"interval {interval_s!r}: must be {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} seconds")
    replaying = bool(os.environ.get(REPLAY_ENV, "").strip())
    sampler = Sampler(GpuSampler(nvml_for_environment(), nvml_timeout_s, slow_every), ProcReader(),
                      None if replaying else KmsgTail(), interval_s)
    sampler.run(out or sys.stdout, count, ChannelWatch(0).wait)
