#!/usr/bin/env python3
"""What `clusterkit monitor` costs: the agent's CPU per node, the TUI's CPU on the head, and latency.

1. agent: the shipped agent (`python3 -I -S AGENTDIR stream --interval 1`), as nodes run it, with NVML
   from an 8-GPU recording (CLUSTERKIT_NVML_REPLAY) and with no NVML at all; CPU share of one core in
   steady state (after the first sample), read from /proc/PID/stat. Beside it, nvitop's collector
   (Device.all() + snapshots of every GPU and its processes, once a second) where nvitop and NVML exist.
2. TUI: `clusterkit monitor --replay` of a synthetic 64-node x 8-GPU recording at real speed in a real
   terminal (tmux, 200x50); CPU share of the monitor process in steady state.
3. latency: the app over live local agents (one per fake host, no SSH); for every new sample, the time
   from the sampler stamping it (`t`) to the app drawing its row. SSH adds its own transit on top.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

READINGS_8GPU = REPO / "tests" / "fixtures" / "synthetic-8xh100-nvlink" / "nvml-readings.json"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def share_of_a_core(pid: int, warmup_s: float, seconds: float) -> float:
    time.sleep(warmup_s)
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)


def unpacked_agent(directory: Path) -> Path:
    from clusterkit.cluster.remote import agent_zipapp

    target = directory / "agent"
    with zipfile.ZipFile(BytesIO(agent_zipapp())) as archive:
        archive.extractall(target)
    return target


def agent_cpu(agent: Path, seconds: float, replay: Path | None) -> float:
    env = {"PATH": "/usr/bin:/bin"}
    if replay is not None:
        env["CLUSTERKIT_NVML_REPLAY"] = str(replay)
    python = shutil.which("python3") or sys.executable
    proc = subprocess.Popen([python, "-I", "-S", str(agent), "stream", "--interval", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return share_of_a_core(proc.pid, 2.0, seconds)
    finally:
        proc.kill()
        proc.wait()


NVITOP_LOOP = """
import time
from nvitop import Device
while True:
    for device in Device.all():
        device.as_snapshot()
        for process in device.processes().values():
            process.as_snapshot()
    time.sleep(1)
"""


def nvitop_cpu(seconds: float) -> str:
    try:
        import nvitop  # noqa: F401
        from nvitop import Device

        Device.count()
    except Exception as exc:
        return f"not measured ({type(exc).__name__}: {str(exc)[:80]})"
    proc = subprocess.Popen([sys.executable, "-c", NVITOP_LOOP], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return f"{share_of_a_core(proc.pid, 2.0, seconds):.2f}% of a core"
    finally:
        proc.kill()
        proc.wait()


def tui_cpu(recording: Path, seconds: float) -> float:
    session = f"ckbench{os.getpid()}"
    command = (f"{shlex.quote(sys.executable)} -m clusterkit monitor --replay {shlex.quote(str(recording))} "
               "--speed 1")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "50", command], check=True,
                   cwd=REPO)
    try:
        pane_pid = int(subprocess.run(["tmux", "list-panes", "-t", session, "-F", "#{pane_pid}"],
                                      capture_output=True, text=True, check=True).stdout.split()[0])
        return share_of_a_core(pane_pid, 5.0, seconds)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)


def latency(hosts: int, seconds: float) -> list[float]:
    from clusterkit.cluster.remote.stream import ProcessOpener
    from clusterkit.monitor.sources import LiveSource, local_stream_command
    from clusterkit.ui.tui.app import MonitorApp
    from clusterkit.ui.tui.thresholds import Thresholds

    names = [f"local{n}" for n in range(hosts)]
    source = LiveSource(names, {}, ProcessOpener(), local_stream_command(1.0), 1.0, stale_after_s=3,
                        lost_after_s=8)
    delays: list[float] = []
    shown: dict[str, int] = {}

    class TimedApp(MonitorApp):
        def refresh_view(self, force: bool = False) -> None:
            super().refresh_view(force)
            drawn = time.time()
            for host, view in self.source.state.nodes.items():
                if view.last is not None and shown.get(host) != view.last.seq:
                    if host in shown:  # the first sample waits for the app to start: not counted
                        delays.append(drawn - view.last.t)
                    shown[host] = view.last.seq

    async def run() -> None:
        app = TimedApp(source, Thresholds.for_interval(1.0))
        async with app.run_test(size=(200, 50)) as pilot:
            await pilot.pause(seconds)

    asyncio.run(run())
    return delays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="steady-state seconds per CPU figure")
    parser.add_argument("--nodes", type=int, default=64, help="nodes in the replayed recording")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        agent = unpacked_agent(Path(tmp))
        with_gpus = agent_cpu(agent, args.seconds, READINGS_8GPU)
        print(f"agent CPU at 1 s, 8 GPUs (replayed NVML readings): {with_gpus:.2f}% of a core")
        print(f"agent CPU at 1 s, no NVML on this machine:          {agent_cpu(agent, args.seconds, None):.2f}% "
              "of a core")
        print(f"nvitop collector at 1 s on the same machine:        {nvitop_cpu(args.seconds)}")
        recording = Path(tmp) / f"synthetic-{args.nodes}x8gpu.jsonl"
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "tests.monitor.synthetic", str(recording), "--nodes", str(args.nodes),
                        "--seconds", str(int(args.seconds + 15)), "--no-events"], check=True, cwd=REPO)
        print(f"({args.nodes}-node recording made in {time.monotonic() - started:.0f}s, "
              f"{recording.stat().st_size / 2**20:.1f} MiB)")
        if shutil.which("tmux"):
            print(f"TUI CPU, {args.nodes} nodes x 8 GPUs replayed at 1 s in tmux: "
                  f"{tui_cpu(recording, args.seconds):.1f}% of a core")
        else:
            print("TUI CPU: not measured (tmux is not installed)")
    delays = latency(4, args.seconds)
    if delays:
        ordered = sorted(delays)
        print(f"sample-to-screen latency, 4 local agents, {len(delays)} samples: median "
              f"{statistics.median(delays) * 1000:.0f} ms, "
              f"p95 {ordered[int(0.95 * (len(ordered) - 1))] * 1000:.0f} ms, "
              f"max {ordered[-1] * 1000:.0f} ms (the view redraws every 0.5 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
