"""Synthetic monitor recordings made by the real sampler, so they follow its format exactly.

Each fake node is the real ``clusterkit.node.collect.sampler.Sampler`` reading (1) a ``/proc`` tree written
here in the kernel's formats (``stat``, ``meminfo``, ``net/dev``, and per rank ``PID/stat``,
``PID/environ``, ``PID/cmdline``) and (2) NVML readings in ``nvml-readings.json``'s format, replayed by
``ReplayNvml`` and changed between ticks (load, power, clocks, a throttled GPU, a straggler).
The samples are written by the monitor's own ``Recorder``. Only the clock and the data are made up.

    python -m tests.monitor.synthetic tests/fixtures/monitor/synthetic-4x8gpu-job.jsonl
    python -m tests.monitor.synthetic OUT --nodes 64 --seconds 60 --no-events   # the bench's 64 nodes
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit.cluster.remote.stream import StreamState
from clusterkit.monitor.sources import Recorder
from clusterkit.node.collect.nvml_replay import ReplayNvml
from clusterkit.node.collect.sampler import GpuSampler, ProcReader, Sampler

READINGS = Path(__file__).resolve().parents[1] / "fixtures" / "synthetic-8xh100-nvlink" / "nvml-readings.json"
T0 = 1_780_000_000.0  # a fixed start, so a regenerated recording is byte-identical
TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux
GIB = 1 << 30


@dataclass
class Scenario:
    """What happens in the recording (times in seconds from the start)."""

    nodes: int = 4
    gpus: int = 8
    seconds: int = 40
    #: (node number, GPU index, from second): that GPU's utilisation, clock and power sag.
    straggler: tuple[int, int, int] | None = (3, 5, 8)
    #: (node number, down from, back at): its agent dies and the head reconnects later.
    outage: tuple[int, int, int] | None = (2, 20, 27)
    #: (node number, local rank, from second): that rank's process is gone.
    exited: tuple[int, int, int] | None = (4, 7, 34)
    #: (node number, GPU index): clocks held by the software power cap.
    power_capped: tuple[int, int] | None = (1, 2)
    events: bool = True


@dataclass
class FakeNode:
    name: str
    number: int
    root: Path
    readings: dict[str, Any]
    cpu: list[int] = field(default_factory=lambda: [0] * 8)
    rank_ticks: dict[int, int] = field(default_factory=dict)
    net: list[int] = field(default_factory=lambda: [0, 0])


def _stat_line(pid: int, ppid: int, ticks: int, rss_pages: int, state: str = "R") -> str:
    # Fields 3..52 of /proc/PID/stat: state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime priority nice threads itreal starttime vsize rss ...
    rest = [state, ppid, pid, pid, 0, -1, 4194560, 1000, 0, 0, 0, ticks * 9 // 10, ticks // 10, 0, 0, 20, 0,
            12, 0, 5000 + pid, 8 * GIB, rss_pages] + [0] * 30
    return f"{pid} (python) " + " ".join(str(v) for v in rest) + "\n"


def write_proc(node: FakeNode, scenario: Scenario, second: int) -> None:
    root = node.root
    busy = 0 if _down(node, scenario, second) else 85
    node.cpu[0] += 64 * busy  # user ticks over 64 CPUs for one second
    node.cpu[3] += 64 * (100 - busy)
    cpus = "".join(f"cpu{i} 0 0 0 0 0 0 0 0 0 0\n" for i in range(64))
    (root / "stat").write_text("cpu  " + " ".join(str(v) for v in node.cpu) + " 0 0\n" + cpus)
    (root / "meminfo").write_text(f"MemTotal:       {2048 * 1024 * 1024} kB\n"
                                  f"MemFree:        {900 * 1024 * 1024} kB\n"
                                  f"MemAvailable:   {(1200 - 10 * node.number) * 1024 * 1024} kB\n")
    node.net[0] += 3_200_000_000
    node.net[1] += 3_100_000_000
    (root / "net").mkdir(exist_ok=True)
    (root / "net" / "dev").write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo "
        "colls carrier compressed\n"
        "    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0\n"
        f"  eth0: {node.net[0]} 900 0 0 0 0 0 0 {node.net[1]} 800 0 0 0 0 0 0\n")
    for local in range(scenario.gpus):
        pid = 4000 + local
        directory = root / str(pid)
        gone = scenario.exited and (node.number, local) == scenario.exited[:2] and second >= scenario.exited[2]
        if gone:
            if directory.exists():
                for entry in directory.iterdir():
                    entry.unlink()
                directory.rmdir()
            continue
        directory.mkdir(exist_ok=True)
        rank = (node.number - 1) * scenario.gpus + local
        env = {"RANK": rank, "LOCAL_RANK": local, "WORLD_SIZE": scenario.nodes * scenario.gpus,
               "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": 29500, "PATH": "/usr/bin"}
        (directory / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
        (directory / "cmdline").write_bytes(b"/opt/env/bin/python\0-u\0train.py\0--deepspeed\0")
        node.rank_ticks[pid] = node.rank_ticks.get(pid, 0) + (98 if local != 7 or node.number != 4 else 60)
        (directory / "stat").write_text(_stat_line(pid, 3999, node.rank_ticks[pid], 3 * GIB // 4096))


def _down(node: FakeNode, scenario: Scenario, second: int) -> bool:
    return bool(scenario.outage and node.number == scenario.outage[0]
                and scenario.outage[1] <= second < scenario.outage[2])


def update_readings(node: FakeNode, scenario: Scenario, second: int) -> None:
    for index, gpu in enumerate(node.readings["gpus"]):
        wobble = (second * 7 + index * 3 + node.number * 5) % 5
        sagging = (scenario.straggler is not None and (node.number, index) == scenario.straggler[:2]
                   and second >= scenario.straggler[2])
        capped = scenario.power_capped is not None and (node.number, index) == scenario.power_capped
        gpu["UtilizationRates"] = {"gpu": 38 + wobble if sagging else 94 + wobble, "memory": 41 + wobble}
        gpu["PowerUsage"] = (260_000 if sagging else 690_000 if capped else 610_000) + wobble * 3000
        gpu["Temperature"] = 66 + wobble + (8 if capped else 0)
        gpu["ClockInfo"] = {"GRAPHICS": 1980, "SM": 1110 if sagging else 1755 if capped else 1980, "MEM": 2619}
        gpu["CurrentClocksEventReasons"] = 0x4 if capped else 0
        gpu["MemoryInfo"] = {"total": 85520809984, "free": 85520809984 - 61 * GIB, "used": 61 * GIB}
        gpu["ComputeRunningProcesses"] = [{"pid": 4000 + index, "usedGpuMemory": 60 * GIB}]
        if scenario.exited and (node.number, index) == scenario.exited[:2] and second >= scenario.exited[2]:
            gpu["ComputeRunningProcesses"] = []
            gpu["UtilizationRates"] = {"gpu": 0, "memory": 0}


def record(out: Path, scenario: Scenario) -> None:
    base = json.loads(READINGS.read_text())
    base["gpus"] = base["gpus"][:scenario.gpus]
    base["count"] = scenario.gpus
    hosts = [f"gpu-node{n:02d}" for n in range(1, scenario.nodes + 1)]
    recorder = Recorder(out, hosts, {h: scenario.gpus for h in hosts}, 1.0, started=T0)
    with tempfile.TemporaryDirectory() as tmp:
        nodes = []
        for number, host in enumerate(hosts, 1):
            root = Path(tmp) / host
            root.mkdir()
            nodes.append(FakeNode(host, number, root, copy.deepcopy(base)))
        clock = {"t": T0}
        samplers = {n.name: _sampler(n, clock, 0) for n in nodes}
        for n in nodes:
            recorder.link(StreamState(n.name, "connected", T0 - 0.5, connects=1))
        for second in range(scenario.seconds):
            for n in nodes:
                clock["t"] = T0 + second + 0.01 * n.number
                write_proc(n, scenario, second)
                update_readings(n, scenario, second)
                outage = scenario.outage if scenario.events else None
                if outage and n.number == outage[0] and second == outage[1]:
                    recorder.link(StreamState(n.name, "lost", clock["t"] - 0.6, error="the remote command exited "
                                              "137: Killed", attempts=1, connects=1))
                    recorder.link(StreamState(n.name, "lost", clock["t"] + 2.5, error=f"connection to {n.name} "
                                              "port 22 refused: sshd is not running there", attempts=2, connects=1))
                if outage and n.number == outage[0] and outage[1] <= second < outage[2]:
                    continue
                if outage and n.number == outage[0] and second == outage[2]:
                    recorder.link(StreamState(n.name, "connected", clock["t"] - 0.3, connects=2))
                    samplers[n.name] = _sampler(n, clock, second)  # a new agent: new boot, seq from 0
                sample = samplers[n.name].sample()
                recorder.sample(n.name, json.loads(json.dumps(sample)), clock["t"] + 0.04)
    recorder.close()


def _sampler(node: FakeNode, clock: dict[str, float], second: int) -> Sampler:
    api = ReplayNvml(node.readings)
    sampler = Sampler(GpuSampler(api, timeout_s=5.0), ProcReader(str(node.root)), None, 1.0,
                      clock=lambda: clock["t"])
    sampler.boot = f"{4242 + second}-{T0 + second:.1f}"
    return sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--no-events", action="store_true", help="no straggler, outage, exit or power cap")
    args = parser.parse_args()
    scenario = Scenario(nodes=args.nodes, gpus=args.gpus, seconds=args.seconds)
    if args.no_events:
        scenario = Scenario(nodes=args.nodes, gpus=args.gpus, seconds=args.seconds, straggler=None, outage=None,
                            exited=None, power_capped=None, events=False)
    record(args.out, scenario)


if __name__ == "__main__":
    main()
